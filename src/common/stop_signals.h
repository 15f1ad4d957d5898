// SIGINT and SIGTERM as a stop request, not an abrupt end: while a StopSignals lives, the two
// signals are blocked in every thread and a thread of its own waits for them, so a command
// asks its work to stop at a safe point (Migration::set_stop) instead of dying mid-step with
// clients paused or a fence half applied. No global flag: the request lives in this object.
//
// Create it in main's thread before any other thread starts (threads inherit the blocked
// set). Child processes get an empty signal mask back (RunProcess resets it).
#pragma once

#include <atomic>
#include <memory>
#include <thread>

namespace pgshift {

class StopSignals {
 public:
  StopSignals();
  ~StopSignals();  // unblocks the signals again
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  bool requested() const { return requested_.load(); }
  // The signal that asked for the stop (SIGINT or SIGTERM), 0 when none.
  int signal() const { return signal_.load(); }

 private:
  void Wait();

  std::atomic<bool> requested_{false};
  std::atomic<int> signal_{0};
  std::atomic<bool> closing_{false};
  std::thread thread_;
};

}  // namespace pgshift
