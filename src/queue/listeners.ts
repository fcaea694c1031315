// Listeners grouped by job id: both the API's SSE hub and the worker's cancel bus fan one connection's
// messages out to the listeners of one job.

export class ListenersByJob<Listener> {
  private readonly byJob = new Map<string, Set<Listener>>();

  /** Returns the unsubscribe function; a job's entry goes when its last listener does. */
  add(jobId: string, listener: Listener): () => void {
    let set = this.byJob.get(jobId);
    if (!set) {
      set = new Set();
      this.byJob.set(jobId, set);
    }
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0) this.byJob.delete(jobId);
    };
  }

  of(jobId: string): Iterable<Listener> {
    return this.byJob.get(jobId) ?? [];
  }

  /** Every listener of every job (a snapshot: listeners may unsubscribe while it is walked). */
  all(): Listener[] {
    return [...this.byJob.values()].flatMap((set) => [...set]);
  }

  clear(): void {
    this.byJob.clear();
  }
}
