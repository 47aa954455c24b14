import { describe, expect, it } from 'vitest';
import { readSse, type SseEvent } from './sse';

function bodyOf(chunks: (string | Uint8Array)[]): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  return new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(typeof chunk === 'string' ? encoder.encode(chunk) : chunk);
      controller.close();
    },
  });
}

async function collect(body: ReadableStream<Uint8Array>): Promise<SseEvent[]> {
  const events: SseEvent[] = [];
  for await (const event of readSse(body)) events.push(event);
  return events;
}

describe('readSse', () => {
  it('reads the gateway’s delta and done events', async () => {
    const events = await collect(
      bodyOf(['event: delta\ndata: {"index":0,"delta":"Bon"}\n\nevent: done\ndata: {"id":"a"}\n\n']),
    );
    expect(events).toEqual([
      { event: 'delta', data: '{"index":0,"delta":"Bon"}' },
      { event: 'done', data: '{"id":"a"}' },
    ]);
  });

  it('joins events split mid-line and mid-field across chunks, with CRLF line ends', async () => {
    const text = 'event: delta\r\ndata: {"index":0,"delta":"Bonjour"}\r\n\r\nevent: delta\r\ndata: {"index":1,"delta":" !"}\r\n\r\n';
    // Every split point: one chunk per character.
    const events = await collect(bodyOf([...text]));
    expect(events.map((e) => JSON.parse(e.data).delta)).toEqual(['Bonjour', ' !']);
    expect(events.every((e) => e.event === 'delta')).toBe(true);
  });

  it('keeps a multi-byte character cut between two chunks', async () => {
    const bytes = new TextEncoder().encode('event: delta\ndata: {"index":0,"delta":"CO₂ économisé"}\n\n');
    const cut = bytes.indexOf(0xe2) + 1; // inside "₂" (e2 82 82)
    const events = await collect(bodyOf([bytes.slice(0, cut), bytes.slice(cut)]));
    expect(JSON.parse(events[0].data).delta).toBe('CO₂ économisé');
  });

  it('names an event without `event:` "message", skips comments, and drops an unterminated last event', async () => {
    const events = await collect(bodyOf([': keep-alive\n\ndata: plain\n\nevent: delta\ndata: {"index":9']));
    expect(events).toEqual([{ event: 'message', data: 'plain' }]);
  });

  it('rethrows a broken connection', async () => {
    let pulls = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        // An error discards what is still queued: the piece is read first, then the line breaks.
        if (pulls++ === 0) controller.enqueue(new TextEncoder().encode('event: delta\ndata: {"index":0,"delta":"a"}\n\n'));
        else controller.error(new TypeError('network error'));
      },
    }, { highWaterMark: 0 });
    const seen: SseEvent[] = [];
    await expect(
      (async () => {
        for await (const event of readSse(body)) seen.push(event);
      })(),
    ).rejects.toThrow('network error');
    expect(seen).toHaveLength(1);
  });

  it('ends a pending read when the signal aborts', async () => {
    const body = new ReadableStream<Uint8Array>({ start() {} }); // never sends anything
    const controller = new AbortController();
    const reading = collect2(readSse(body, controller.signal));
    controller.abort();
    await expect(reading).resolves.toEqual([]);
  });
});

async function collect2(events: AsyncGenerator<SseEvent>): Promise<SseEvent[]> {
  const all: SseEvent[] = [];
  for await (const event of events) all.push(event);
  return all;
}
