import type { Translation } from '..';
import type { chat as reference } from '../fr/chat';

export const chat: Translation<typeof reference> = {
  log: 'Conversation with the assistant',
  you: 'You wrote',
  assistant: 'The assistant’s answer',
  jumpToLatest: 'Go to the latest message',
  clear: 'Clear conversation',
  clearConfirm: 'Clear this conversation from this device? Waiting messages will not be sent.',
  storageError: 'Could not save on this device (storage full or private browsing): {detail}',
  empty: {
    title: 'Ask the co-ownership assistant a question',
    intro: 'A few examples to get started:',
    noCopro: 'Your access names no co-ownership: answers will stay general.',
    examples: {
      meeting: 'What should go on the agenda of the next general meeting?',
      charges: 'How are the lift charges shared between the co-owners?',
      leak: 'A leak in my bathroom is damaging my neighbour’s ceiling: who pays for the repair?',
    },
  },
  composer: {
    label: 'Your message',
    placeholder: 'Type your question…',
    hint: 'Enter to send, Shift+Enter for a new line.',
    length: '{count} / {max} characters',
    send: 'Send',
    stop: 'Stop the answer',
    offline: 'You are offline: your message will be sent as soon as the connection is back.',
    sendFailed: 'The message could not be saved: {detail}',
  },
  model: {
    label: 'Model',
    groups: { auto: 'Automatic', edge: '🍓 Local (edge)', cloud: '☁️ Cloud' },
    auto: {
      auto: 'Automatic choice',
      small: 'Automatic, small model',
      large: 'Automatic, large model',
    },
    unavailable: '(unavailable)',
    loadFailed: 'The list of models could not be updated: {detail}',
  },
  routing: {
    label: 'Routing',
    options: {
      copro_default: {
        label: 'Co-ownership policy',
        help: 'Follows the rule your co-ownership has chosen.',
      },
      edge_only: {
        label: 'Local only',
        help: 'Your data never leaves the local nodes (Raspberry Pi); with no node available, no answer.',
      },
      prefer_edge: {
        label: 'Local first',
        help: 'A local node first, the cloud only when none can answer.',
      },
      lowest_carbon: {
        label: 'Lowest CO₂',
        help: 'Wherever the answer emits the least CO₂.',
      },
      fastest: {
        label: 'Fastest',
        help: 'Wherever the answer should arrive soonest.',
      },
    },
  },
  outbox: {
    queuedOffline: {
      one: '1 message waiting — it will be sent when the connection is back',
      other: '{count} messages waiting — they will be sent when the connection is back',
    },
    queued: {
      one: '1 message waiting to be sent',
      other: '{count} messages waiting to be sent',
    },
    sending: 'Sending…',
    failed: {
      one: '1 failed',
      other: '{count} failed',
    },
  },
  status: {
    queued: 'Waiting',
    sending: 'Sending…',
    streaming: 'Answering…',
    failed: 'Failed',
    stopped: 'Answer stopped',
  },
  message: {
    thinking: 'The assistant is writing its answer…',
    copy: 'Copy',
    copyLabel: 'Copy this message',
    copied: 'Copied',
    copyFailed: 'Could not copy',
    retry: 'Retry',
    retryLabel: 'Retry sending this message',
    details: 'Technical details',
  },
  errors: {
    rate_limited: 'Too many requests in a short time: please wait a moment.',
    model_not_found: 'The gateway does not know this model: please choose another one.',
    no_target_available: 'No server can run this model right now: try another model, or try again later.',
    edge_only_no_node:
      'The co-ownership’s policy keeps your data on its own nodes, and none of them serves this model right now.',
    node_lost: 'The node that was answering stopped and no other serves this model: please try again.',
    policy_forbids:
      'The co-ownership’s policy forbids this routing: its data stays on its own nodes. Choose “Co-ownership policy” or “Local only”.',
    forbidden: 'Your access does not allow this request for this co-ownership.',
    unauthorized: 'Your session has expired: please sign in again.',
    timeout: 'The answer took too long: please try again.',
    offline: 'The server cannot be reached: check your connection.',
    unavailable: 'The service is temporarily unavailable: please try again in a moment.',
    cancelled: 'You stopped this answer.',
    interrupted: 'The answer was cut off on its way: please try again.',
    too_long: 'This message is too long to be sent.',
    unsupported: 'No server for this model accepts this request as it is: try another model.',
    gateway: 'The gateway refused the request: {detail}',
  },
  meta: {
    label: 'Where and how this answer was produced:',
    edgeNoNode: 'local node',
    edgeLong: 'Ran locally on node {node}.',
    cloud: 'cloud',
    cloudLong: 'Ran in the cloud at {provider}.',
    grid: 'grid',
    gridLong: 'Ran on the compute grid ({node}).',
    latencyLong: 'Response time: {value}.',
    ms: '{value} ms',
    seconds: '{value} s',
    tokens: '{prompt} → {completion} tokens',
    tokensLong: '{prompt} tokens sent, {completion} tokens generated.',
    co2: '{value} g CO₂',
    co2Long: '{value} grams of CO₂ emitted.',
    saved: '{value} g saved',
    savedLong: '{value} grams of CO₂ saved.',
  },
  providers: {
    anthropic: 'Anthropic',
    openai: 'OpenAI',
    mistral: 'Mistral AI',
    local: 'local',
  },
};
