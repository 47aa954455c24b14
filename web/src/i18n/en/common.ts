import type { Translation } from '..';
import type { common as reference } from '../fr/common';

export const common: Translation<typeof reference> = {
  appName: 'KoproGo Symbiose',
  tagline: "The co-ownership's assistant",
  language: 'Language',
  languages: { fr: 'Français', en: 'English', nl: 'Nederlands' },
  theme: { label: 'Theme', system: 'System', light: 'Light', dark: 'Dark' },
  copro: 'Co-ownership',
  signOut: 'Sign out',
  online: 'Online',
  offline: 'Offline',
  close: 'Close',
  loading: 'Loading…',
  skipToContent: 'Skip to content',
  areas: 'Areas of the page',
  area: { chat: 'Chat', actions: 'Quick actions', stats: 'Costs and CO₂' },
  error: 'Error',
};
