// The chat PWA, built to web/dist and served by the gateway at /mcp-chat (docs/pwa.md).
import svelte from '@astrojs/svelte';
import tailwindcss from '@tailwindcss/vite';
import AstroPWA from '@vite-pwa/astro';
import { defineConfig } from 'astro/config';

export default defineConfig({
  base: '/mcp-chat',
  trailingSlash: 'always',
  output: 'static',
  // No telemetry, no fonts or images fetched at build time: the build runs offline after `npm ci`.
  integrations: [
    svelte(),
    AstroPWA({
      registerType: 'autoUpdate',
      injectRegister: false,
      base: '/mcp-chat/',
      scope: '/mcp-chat/',
      manifest: {
        name: 'KoproGo Symbiose',
        short_name: 'KoproGo',
        description: "L'assistant de la copropriété : PV, traductions, factures, charges.",
        lang: 'fr',
        start_url: '/mcp-chat/',
        scope: '/mcp-chat/',
        display: 'standalone',
        background_color: '#0f172a',
        theme_color: '#166534',
        icons: [
          { src: 'icons/icon-192.png', sizes: '192x192', type: 'image/png' },
          { src: 'icons/icon-512.png', sizes: '512x512', type: 'image/png' },
          { src: 'icons/icon-512-maskable.png', sizes: '512x512', type: 'image/png', purpose: 'maskable' },
        ],
      },
      workbox: {
        // The app shell and its hashed assets; the API (/mcp/v1, /v1, /mcp) is never cached.
        globPatterns: ['**/*.{html,js,css,svg,png}'],
        // A new worker takes over at once, and the page that installed it too: the first visit's
        // page is then served offline without a reload.
        clientsClaim: true,
        skipWaiting: true,
        navigateFallback: '/mcp-chat/',
        navigateFallbackAllowlist: [/^\/mcp-chat/],
        runtimeCaching: [],
      },
    }),
  ],
  vite: {
    plugins: [tailwindcss()],
  },
});
