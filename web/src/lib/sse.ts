/**
 * Server-Sent Events read from a `fetch` response body (EventSource cannot POST with headers):
 * `eventsource-parser` does the line protocol, so events split across network chunks, CRLF line
 * ends and comments are handled as the spec says.
 */
import { createParser, type EventSourceMessage } from 'eventsource-parser';

export interface SseEvent {
  /** The `event:` field; 'message' when the event names none (the spec's default). */
  event: string;
  data: string;
}

/**
 * The events of `body` in order; ends when the body ends, or early when `signal` aborts (the
 * caller checks `signal.aborted`). A read error is rethrown as it came.
 */
export async function* readSse(
  body: ReadableStream<Uint8Array>,
  signal?: AbortSignal,
): AsyncGenerator<SseEvent, void, undefined> {
  const reader = body.getReader();
  // Not every fetch errors the body when its request is aborted: cancelling the reader ends a
  // pending read at once (a locked stream cannot be cancelled any other way).
  const onAbort = () => void reader.cancel().catch(() => undefined);
  signal?.addEventListener('abort', onAbort, { once: true });
  const decoder = new TextDecoder();
  const ready: SseEvent[] = [];
  let finished = false;
  const parser = createParser({
    onEvent: (message: EventSourceMessage) => ready.push({ event: message.event ?? 'message', data: message.data }),
  });
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) {
        finished = true;
        // A multi-byte character cut at the very end, and a last event without its blank line,
        // are not events (the spec drops an unterminated event).
        parser.feed(decoder.decode());
        break;
      }
      parser.feed(decoder.decode(value, { stream: true }));
      while (ready.length > 0) yield ready.shift() as SseEvent;
    }
    while (ready.length > 0) yield ready.shift() as SseEvent;
  } finally {
    signal?.removeEventListener('abort', onAbort);
    // The consumer stopped early (it got `done`, or gave up): stop the download too.
    if (!finished) await reader.cancel().catch(() => undefined);
    reader.releaseLock();
  }
}
