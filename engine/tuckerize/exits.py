"""Exit codes of `python3 -m tuckerize`, the contract with the worker (src/worker/):

  0   ok;
  1   a bug or a crash: the worker retries the job;
  2   bad input (model, dataset, options): retrying cannot help, the worker fails the job at once;
  143 SIGTERM arrived (the job was canceled or the worker is shutting down) and the engine unwound.

Before exiting 1 or 2 the engine prints one error event on stdout (errors.error_event).
"""
import signal

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_INPUT = 2
EXIT_TERMINATED = 128 + signal.SIGTERM
