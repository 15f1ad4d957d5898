// File-system helpers with the durability pgshift's state needs.
#pragma once

#include <string>

#include "common/status.h"

namespace pgshift {

Result<std::string> ReadFile(const std::string& path);
// Writes to "<path>.tmp", fsyncs, renames over `path` and fsyncs the folder: after a crash the
// file holds either the old or the new content, never a mix. With `sync` false there is no
// fsync: still never a mix, and whole after the process is killed, but a crash of the machine
// may bring back the old content.
Status WriteFileAtomic(const std::string& path, const std::string& content, int mode = 0644,
                       bool sync = true);
Status MakeDirs(const std::string& path, int mode = 0755);
bool PathExists(const std::string& path);
Status RemoveAll(const std::string& path);
// Gives `path` (recursively when `recursive`) to the OS user `user`; a no-op when not root.
Status ChownToUser(const std::string& path, const std::string& user, bool recursive);
std::string AbsolutePath(const std::string& path);
std::string DirName(const std::string& path);

}  // namespace pgshift
