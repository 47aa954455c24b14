/**
 * One quick action's grid task as reactive state: submit (with its idempotency key), follow it
 * to the end, say why it failed. A submission that did not reach the gateway (or that the
 * gateway could not take: 502/503/504) can be sent again with the same key — the gateway then
 * answers with the first submission's task if it got it. A press of "submit" is a new key.
 */
import { newId } from '../../lib/ids';
import { app } from '../../lib/app.svelte';
import { ApiError, NetworkError } from '../../lib/http';
import {
  cancelTask,
  pollTask,
  requestErrorMessage,
  submitTask,
  taskFailureMessage,
  taskPhase,
  type Message,
  type TaskRequest,
  type TaskView,
} from '../../lib/tasks-api';

export type RunPhase = 'idle' | 'submitting' | 'queued' | 'running' | 'verifying' | 'completed' | 'failed';

export class TaskRun {
  phase: RunPhase = $state('idle');
  task: TaskView | null = $state(null);
  error: Message | null = $state(null);
  /** The gateway's or the grid's own words, shown under the friendly message. */
  detail: string | null = $state(null);
  /** The failed submission can be sent again with the same key. */
  retryable = $state(false);
  /** Seconds being waited out after a 429, while waiting. */
  waitingS: number | null = $state(null);
  connectionLost = $state(false);

  #key: string | null = null;
  #request: TaskRequest | null = null;
  #controller: AbortController | null = null;

  /** The completed task's result read by `parse`, or why it could not be read; `value` null before. */
  result<T>(parse: (raw: unknown) => T): { value: T | null; error: string | null } {
    if (this.phase !== 'completed' || !this.task) return { value: null, error: null };
    try {
      return { value: parse(this.task.result), error: null };
    } catch (error) {
      return { value: null, error: error instanceof Error ? error.message : String(error) };
    }
  }

  get busy(): boolean {
    return this.phase === 'submitting' || this.phase === 'queued' || this.phase === 'running' || this.phase === 'verifying';
  }

  /** A new submission (a new idempotency key). */
  start(request: TaskRequest): Promise<void> {
    // One key per press of "submit", reused by its retries (ids.newId works on plain http too).
    this.#key = newId();
    this.#request = request;
    return this.#run();
  }

  /** The same submission again, same key, after it did not get through. */
  retry(): Promise<void> {
    if (!this.#request || !this.#key || !this.retryable) return Promise.resolve();
    return this.#run();
  }

  /** Ask the grid to stop the task; the polling reports it cancelled. */
  async cancel(): Promise<void> {
    if (!this.task) {
      this.#controller?.abort();
      return;
    }
    try {
      this.task = await cancelTask(this.task.id);
    } catch (error) {
      // Ended meanwhile (409) or unreachable: the polling shows how it ends.
      if (!(error instanceof ApiError) && !(error instanceof NetworkError)) throw error;
    }
  }

  /** Stop following (the panel closed); the task itself goes on on the grid. */
  dispose(): void {
    this.#controller?.abort();
    this.#controller = null;
  }

  reset(): void {
    this.dispose();
    this.phase = 'idle';
    this.task = null;
    this.error = this.detail = null;
    this.retryable = false;
    this.waitingS = null;
    this.connectionLost = false;
  }

  async #run(): Promise<void> {
    const request = this.#request;
    const key = this.#key;
    if (!request || !key) return;
    this.dispose();
    const controller = new AbortController();
    this.#controller = controller;
    this.task = null;
    this.error = this.detail = null;
    this.retryable = false;
    this.waitingS = null;
    this.connectionLost = false;
    if (!app.online) {
      // Tasks are not queued offline: the page says so instead of pretending.
      this.phase = 'failed';
      this.error = { key: 'actions.errors.offline' };
      this.retryable = true;
      return;
    }
    this.phase = 'submitting';
    try {
      const accepted = await submitTask(request, key, {
        signal: controller.signal,
        onRateLimited: (seconds) => (this.waitingS = seconds),
      });
      this.waitingS = null;
      this.phase = 'queued';
      const task = await pollTask(accepted.id, {
        signal: controller.signal,
        onUpdate: (view) => {
          this.task = view;
          this.waitingS = null;
          this.phase = taskPhase(view.status);
        },
        onConnection: (lost) => (this.connectionLost = lost),
        onRateLimited: (seconds) => (this.waitingS = seconds),
      });
      if (task.status !== 'completed') {
        this.error = taskFailureMessage(task);
        this.detail = task.error?.message ?? null;
      } else {
        // The costs panel reloads its figures (a completed task is counted in /mcp/v1/stats).
        window.dispatchEvent(new CustomEvent('koprogo:answered', { detail: { copro: request.copro_id } }));
      }
    } catch (error) {
      if (error instanceof DOMException && error.name === 'AbortError') return;
      this.phase = 'failed';
      this.waitingS = null;
      this.error = requestErrorMessage(error);
      this.detail = error instanceof ApiError ? error.message : null;
      // Not reached, or the gateway could not take it: the same key may be sent again (the
      // gateway answers a retry of a submission it did take with that same task).
      this.retryable = error instanceof NetworkError || (error instanceof ApiError && error.retryable);
    } finally {
      if (this.#controller === controller) this.#controller = null;
    }
  }
}
