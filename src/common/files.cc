#include "common/files.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace pgshift {

namespace fs = std::filesystem;

Result<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (errno == ENOENT) return Status::NotFound("no such file: " + path);
    return Status::Unavailable("cannot read " + path + ": " + strerror(errno));
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Status WriteFileAtomic(const std::string& path, const std::string& content, int mode, bool sync) {
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return Status::Unavailable("cannot write " + tmp + ": " + strerror(errno));
  size_t off = 0;
  while (off < content.size()) {
    ssize_t n = ::write(fd, content.data() + off, content.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      return Status::Unavailable("cannot write " + tmp + ": " + strerror(e));
    }
    off += static_cast<size_t>(n);
  }
  if (::fchmod(fd, static_cast<mode_t>(mode)) != 0 || (sync && ::fsync(fd) != 0)) {
    int e = errno;
    ::close(fd);
    return Status::Unavailable("cannot sync " + tmp + ": " + strerror(e));
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return Status::Unavailable("cannot rename " + tmp + ": " + strerror(errno));
  }
  int dfd = sync ? ::open(DirName(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return Status::Ok();
}

Status MakeDirs(const std::string& path, int mode) {
  std::error_code ec;
  fs::create_directories(path, ec);
  if (ec) return Status::Unavailable("cannot create folder " + path + ": " + ec.message());
  ::chmod(path.c_str(), static_cast<mode_t>(mode));
  return Status::Ok();
}

bool PathExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

Status RemoveAll(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
  if (ec) return Status::Unavailable("cannot remove " + path + ": " + ec.message());
  return Status::Ok();
}

Status ChownToUser(const std::string& path, const std::string& user, bool recursive) {
  if (::geteuid() != 0 || user.empty()) return Status::Ok();
  struct passwd* pw = ::getpwnam(user.c_str());
  if (pw == nullptr) {
    return Status::FailedPrecondition("OS user '" + user +
                                      "' does not exist; run scripts/setup.sh to create it");
  }
  auto one = [&](const std::string& p) -> Status {
    if (::lchown(p.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
      return Status::Unavailable("cannot chown " + p + ": " + strerror(errno));
    }
    return Status::Ok();
  };
  PGSHIFT_RETURN_IF_ERROR(one(path));
  if (recursive && fs::is_directory(path)) {
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(path, ec); !ec && it != fs::end(it);
         it.increment(ec)) {
      PGSHIFT_RETURN_IF_ERROR(one(it->path().string()));
    }
  }
  return Status::Ok();
}

std::string AbsolutePath(const std::string& path) {
  std::error_code ec;
  auto p = fs::absolute(path, ec);
  return ec ? path : p.lexically_normal().string();
}

std::string DirName(const std::string& path) {
  auto p = fs::path(path).parent_path();
  return p.empty() ? "." : p.string();
}

}  // namespace pgshift
