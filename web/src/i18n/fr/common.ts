// Shared strings: the page's frame, sign-in, language, theme, connection.
export const common = {
  appName: 'KoproGo Symbiose',
  tagline: "L'assistant de la copropriété",
  language: 'Langue',
  languages: { fr: 'Français', en: 'English', nl: 'Nederlands' },
  theme: { label: 'Thème', system: 'Système', light: 'Clair', dark: 'Sombre' },
  copro: 'Copropriété',
  signOut: 'Se déconnecter',
  online: 'En ligne',
  offline: 'Hors ligne',
  close: 'Fermer',
  loading: 'Chargement…',
  skipToContent: 'Aller au contenu',
  areas: 'Espaces de la page',
  area: { chat: 'Discussion', actions: 'Actions rapides', stats: 'Coûts et CO₂' },
  error: 'Erreur',
};
