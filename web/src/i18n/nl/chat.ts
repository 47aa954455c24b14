import type { Translation } from '..';
import type { chat as reference } from '../fr/chat';

export const chat: Translation<typeof reference> = {
  log: 'Gesprek met de assistent',
  you: 'U schreef',
  assistant: 'Antwoord van de assistent',
  jumpToLatest: 'Naar het laatste bericht',
  clear: 'Gesprek wissen',
  clearConfirm: 'Dit gesprek van dit toestel wissen? Berichten in de wachtrij worden niet verzonden.',
  storageError: 'Kon niet bewaren op dit toestel (opslag vol of privénavigatie): {detail}',
  empty: {
    title: 'Stel uw vraag aan de assistent van de mede-eigendom',
    intro: 'Enkele voorbeelden om te beginnen:',
    noCopro: 'Uw toegang vermeldt geen mede-eigendom: de antwoorden blijven algemeen.',
    examples: {
      meeting: 'Welke punten moeten op de agenda van de volgende algemene vergadering?',
      charges: 'Hoe worden de kosten van de lift verdeeld onder de mede-eigenaars?',
      leak: 'Een lek in mijn badkamer beschadigt het plafond van de buren: wie betaalt de herstelling?',
    },
  },
  composer: {
    label: 'Uw bericht',
    placeholder: 'Typ uw vraag…',
    hint: 'Enter om te verzenden, Shift+Enter voor een nieuwe regel.',
    length: '{count} / {max} tekens',
    send: 'Verzenden',
    stop: 'Antwoord stoppen',
    offline: 'U bent offline: uw bericht wordt verzonden zodra de verbinding terug is.',
    sendFailed: 'Het bericht kon niet worden bewaard: {detail}',
  },
  model: {
    label: 'Model',
    groups: { auto: 'Automatisch', edge: '🍓 Lokaal (edge)', cloud: '☁️ Cloud' },
    auto: {
      auto: 'Automatische keuze',
      small: 'Automatisch, klein model',
      large: 'Automatisch, groot model',
    },
    unavailable: '(niet beschikbaar)',
    loadFailed: 'De lijst met modellen kon niet worden bijgewerkt: {detail}',
  },
  routing: {
    label: 'Routering',
    options: {
      copro_default: {
        label: 'Beleid van de mede-eigendom',
        help: 'Volgt de regel die uw mede-eigendom heeft gekozen.',
      },
      edge_only: {
        label: 'Alleen lokaal',
        help: 'Uw gegevens verlaten de lokale nodes (Raspberry Pi) nooit; zonder beschikbare node geen antwoord.',
      },
      prefer_edge: {
        label: 'Bij voorkeur lokaal',
        help: 'Eerst een lokale node, de cloud alleen als geen enkele kan antwoorden.',
      },
      lowest_carbon: {
        label: 'Minste CO₂',
        help: 'Waar het antwoord de minste CO₂ uitstoot.',
      },
      fastest: {
        label: 'Snelste',
        help: 'Waar het antwoord het snelst zou moeten komen.',
      },
    },
  },
  outbox: {
    queuedOffline: {
      one: '1 bericht in de wachtrij — wordt verzonden zodra de verbinding terug is',
      other: '{count} berichten in de wachtrij — worden verzonden zodra de verbinding terug is',
    },
    queued: {
      one: '1 bericht wacht op verzending',
      other: '{count} berichten wachten op verzending',
    },
    sending: 'Verzenden…',
    failed: {
      one: '1 mislukt',
      other: '{count} mislukt',
    },
  },
  status: {
    queued: 'In de wachtrij',
    sending: 'Verzenden…',
    streaming: 'Antwoord wordt geschreven…',
    failed: 'Mislukt',
    stopped: 'Antwoord gestopt',
  },
  message: {
    thinking: 'De assistent schrijft zijn antwoord…',
    copy: 'Kopiëren',
    copyLabel: 'Dit bericht kopiëren',
    copied: 'Gekopieerd',
    copyFailed: 'Kopiëren mislukt',
    retry: 'Opnieuw',
    retryLabel: 'Opnieuw verzenden',
    details: 'Technische details',
  },
  errors: {
    rate_limited: 'Te veel aanvragen in korte tijd: wacht even.',
    model_not_found: 'De gateway kent dit model niet: kies een ander model.',
    no_target_available: 'Geen enkele server kan dit model nu uitvoeren: probeer een ander model of later opnieuw.',
    edge_only_no_node:
      'Het beleid van de mede-eigendom houdt uw gegevens op haar eigen nodes, en geen enkele daarvan biedt dit model nu aan.',
    node_lost: 'De node die antwoordde is gestopt en geen andere biedt dit model aan: probeer opnieuw.',
    policy_forbids:
      'Het beleid van de mede-eigendom verbiedt deze routering: haar gegevens blijven op haar eigen nodes. Kies ‘Beleid van de mede-eigendom’ of ‘Alleen lokaal’.',
    forbidden: 'Uw toegang laat deze aanvraag voor deze mede-eigendom niet toe.',
    unauthorized: 'Uw sessie is verlopen: meld u opnieuw aan.',
    timeout: 'Het antwoord duurde te lang: probeer opnieuw.',
    offline: 'De server is niet bereikbaar: controleer uw verbinding.',
    unavailable: 'De dienst is tijdelijk niet beschikbaar: probeer het zo dadelijk opnieuw.',
    cancelled: 'U hebt dit antwoord gestopt.',
    interrupted: 'Het antwoord werd onderweg onderbroken: probeer opnieuw.',
    too_long: 'Dit bericht is te lang om te verzenden.',
    unsupported: 'Geen enkele server voor dit model aanvaardt deze aanvraag zoals ze is: probeer een ander model.',
    gateway: 'De gateway weigerde de aanvraag: {detail}',
  },
  meta: {
    label: 'Waar en hoe dit antwoord tot stand kwam:',
    edgeNoNode: 'lokale node',
    edgeLong: 'Lokaal uitgevoerd op node {node}.',
    cloud: 'cloud',
    cloudLong: 'Uitgevoerd in de cloud bij {provider}.',
    grid: 'grid',
    gridLong: 'Uitgevoerd op het rekengrid ({node}).',
    latencyLong: 'Antwoordtijd: {value}.',
    ms: '{value} ms',
    seconds: '{value} s',
    tokens: '{prompt} → {completion} tokens',
    tokensLong: '{prompt} tokens verzonden, {completion} tokens gegenereerd.',
    co2: '{value} g CO₂',
    co2Long: '{value} gram CO₂ uitgestoten.',
    saved: '{value} g bespaard',
    savedLong: '{value} gram CO₂ bespaard.',
  },
  providers: {
    anthropic: 'Anthropic',
    openai: 'OpenAI',
    mistral: 'Mistral AI',
    local: 'lokaal',
  },
};
