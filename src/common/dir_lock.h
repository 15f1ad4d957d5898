// One process at a time in a folder: `pgshift upgrade`, `cutover`, `rollback`, `finish` and
// `abort` take the lock of the migration's state folder, so two of them never drive one
// migration.
//
// The lock is flock(2) on <dir>/lock: the kernel drops it when its process ends, kill -9
// included, so the lock of a process that is gone is simply taken over by the next command
// (which says so). The file also says who holds it, for the error the next command prints.
#pragma once

#include <memory>
#include <string>

#include "common/status.h"

namespace pgshift {

class DirLock {
 public:
  // Takes the lock of `dir` (made if missing, mode 0700) for `command` (e.g. "upgrade").
  // FailedPrecondition naming the holder (pid, command, since when) when another process
  // holds it. `took_over` (may be null) is set to the previous holder's description when it
  // left the lock behind by dying.
  static Result<std::unique_ptr<DirLock>> Acquire(const std::string& dir,
                                                  const std::string& command,
                                                  std::string* took_over = nullptr);
  ~DirLock();  // releases the lock and removes the file
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;

 private:
  DirLock(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::string path_;
  int fd_;
};

}  // namespace pgshift
