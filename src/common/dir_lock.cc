#include "common/dir_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/clock.h"
#include "common/files.h"
#include "common/strings.h"

namespace pgshift {

namespace {

// "pid 123, pgshift upgrade, since 2026-12-01T06:00:00.000Z"
std::string Holder(const std::string& content) {
  std::string pid, command, since;
  for (const auto& line : Split(content, '\n', true)) {
    auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    std::string k = line.substr(0, eq), v = line.substr(eq + 1);
    if (k == "pid") pid = v;
    if (k == "command") command = v;
    if (k == "since") since = v;
  }
  if (pid.empty()) return "another pgshift process";
  return "pid " + pid + " (pgshift " + command + ", since " + since + ")";
}

}  // namespace

Result<std::unique_ptr<DirLock>> DirLock::Acquire(const std::string& dir,
                                                  const std::string& command,
                                                  std::string* took_over) {
  PGSHIFT_RETURN_IF_ERROR(MakeDirs(dir, 0700));
  const std::string path = dir + "/lock";
  // The file may be removed by the holder between our open and our flock; a lock on a removed
  // file locks nothing, so check that the path still names the file we hold, else try again.
  for (int tries = 0; tries < 10; ++tries) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
      return Status::Unavailable("cannot open " + path + ": " + std::strerror(errno));
    }
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      auto content = ReadFile(path);
      ::close(fd);
      if (err == EWOULDBLOCK) {
        return Status::FailedPrecondition("the state folder " + dir + " is in use by " +
                                          Holder(content.ok() ? *content : "") +
                                          "; wait for it to end, or stop it (Ctrl-C / kill)");
      }
      return Status::Unavailable("cannot lock " + path + ": " + std::strerror(err));
    }
    struct stat by_fd, by_path;
    if (::fstat(fd, &by_fd) != 0 || ::stat(path.c_str(), &by_path) != 0 ||
        by_fd.st_ino != by_path.st_ino || by_fd.st_dev != by_path.st_dev) {
      ::close(fd);
      continue;
    }
    // Ours now. Whatever it says is a holder that died without removing it.
    char buf[512];
    ssize_t n = ::pread(fd, buf, sizeof buf, 0);
    if (n > 0 && took_over != nullptr)
      *took_over = Holder(std::string(buf, static_cast<size_t>(n)));
    const std::string me =
        "pid=" + std::to_string(::getpid()) + "\ncommand=" + command + "\nsince=" + NowUtc() + "\n";
    if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, me.data(), me.size(), 0) < 0) {
      ::close(fd);
      return Status::Unavailable("cannot write " + path + ": " + std::strerror(errno));
    }
    return std::unique_ptr<DirLock>(new DirLock(path, fd));
  }
  return Status::Unavailable("cannot lock " + path + ": it keeps being replaced");
}

DirLock::~DirLock() {
  // Removed while still held: a process that opens it now gets a new file, and one that
  // opened this one finds it removed after its flock and tries again.
  ::unlink(path_.c_str());
  ::close(fd_);
}

}  // namespace pgshift
