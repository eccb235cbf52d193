// A worker process: what `spoad --worker` runs after the master spawned it. It reads its
// instructions (configuration text, agent, relative pid, its pool's state) from the channel on
// fd 3, serves its agent, reports READY once it listens, answers CLI commands routed by the
// master (CliResult), sends its agent's pool state when the agent changes it, and stops.
// Its counters live in the metrics arena the master gave it (the Metrics message: an inherited
// memfd, mapped writable here), with a heartbeat set every second (metrics_view.h). It stops:
//
//   SIGUSR1           soft-stop, bounded by global.grace
//   SIGTERM, SIGINT   hard-stop
//   SIGHUP, SIGUSR2   the agent re-reads its data (lists)
//   channel closed    the master is gone (even SIGKILLed): hard-stop at once
#pragma once

namespace spoad::supervisor {

// Runs the worker on the channel `fd`. Returns the process exit status.
int run_worker(int fd);

}  // namespace spoad::supervisor
