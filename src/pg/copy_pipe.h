// Streams one COPY ... TO STDOUT on one connection into a COPY ... FROM STDIN on another, in
// bounded memory: rows pass through a buffer of `kCopyPipeBuffer` bytes (plus libpq's own
// buffers, which grow to the largest single row), never a whole table.
//
// Not thread-safe per connection (as Connection); pipes on distinct connection pairs may run in
// parallel threads.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "common/status.h"
#include "pg/connection.h"

namespace pgshift::pg {

inline constexpr size_t kCopyPipeBuffer = 256 * 1024;

struct CopyPipeResult {
  int64_t bytes = 0;  // COPY stream bytes that went through
  int64_t rows = 0;   // rows the receiving side reported ("COPY n")
};

// Starts `copy_in_sql` on `to`, then `copy_out_sql` on `from`, and streams until the source
// ends. `on_chunk(bytes)` runs before each buffer is sent (a rate limit may sleep there; a
// non-ok status stops the pipe and fails the receiving COPY). On any failure the receiving
// COPY is failed, so nothing of this pipe is kept unless the caller's transaction commits; the
// sending connection may then still be inside its COPY: the caller discards it.
Result<CopyPipeResult> PipeCopy(Connection& from, const std::string& copy_out_sql,
                                Connection& to, const std::string& copy_in_sql,
                                const std::function<Status(size_t)>& on_chunk);

}  // namespace pgshift::pg
