#include "common/stop_signals.h"

#include <signal.h>

#include <cstdio>
#include <ctime>

namespace pgshift {

namespace {

sigset_t StopSet() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

}  // namespace

StopSignals::StopSignals() {
  sigset_t set = StopSet();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  thread_ = std::thread([this] { Wait(); });
}

StopSignals::~StopSignals() {
  closing_ = true;
  thread_.join();
  sigset_t set = StopSet();
  // A signal that came after the work ended still ends the process, as it would have.
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
}

void StopSignals::Wait() {
  const sigset_t set = StopSet();
  const timespec tick{0, 100 * 1000 * 1000};
  while (!closing_) {
    int sig = sigtimedwait(&set, nullptr, &tick);
    if (sig <= 0) continue;
    const bool first = !requested_.exchange(true);
    signal_ = sig;
    fprintf(stderr, "pgshift: %s: %s\n", sig == SIGINT ? "interrupted" : "terminated",
            first ? "stopping at the next safe point (clients are never left paused)"
                  : "still stopping; the step under way ends first");
    fflush(stderr);
  }
}

}  // namespace pgshift
