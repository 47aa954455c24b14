import type { Translation } from '..';
import type { common as reference } from '../fr/common';

export const common: Translation<typeof reference> = {
  appName: 'KoproGo Symbiose',
  tagline: 'De assistent van de mede-eigendom',
  language: 'Taal',
  languages: { fr: 'Français', en: 'English', nl: 'Nederlands' },
  theme: { label: 'Thema', system: 'Systeem', light: 'Licht', dark: 'Donker' },
  copro: 'Mede-eigendom',
  signOut: 'Afmelden',
  online: 'Online',
  offline: 'Offline',
  close: 'Sluiten',
  loading: 'Laden…',
  skipToContent: 'Naar de inhoud',
  areas: 'Delen van de pagina',
  area: { chat: 'Gesprek', actions: 'Snelle acties', stats: 'Kosten en CO₂' },
  error: 'Fout',
};
