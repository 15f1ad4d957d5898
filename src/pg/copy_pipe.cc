#include "pg/copy_pipe.h"

#include <cstdlib>

namespace pgshift::pg {

namespace {

// Reads every remaining result of `c`'s current command; returns the first failure's status,
// and the row count of a COPY's command tag in *rows.
Status DrainResults(Connection& c, int64_t* rows) {
  Status first;
  while (PGresult* r = PQgetResult(c.raw())) {
    QueryResult owned(r);
    Status s = c.ResultStatus(r);
    if (!s.ok() && first.ok()) first = s;
    if (s.ok() && rows != nullptr) *rows = owned.AffectedRows();
  }
  return first;
}

// Ends the receiving COPY with an error: the server discards what it got.
void FailCopyIn(Connection& to, const std::string& why) {
  if (PQputCopyEnd(to.raw(), ("pgshift: " + why).c_str()) == 1) (void)DrainResults(to, nullptr);
}

// Starts `sql` on `c` and checks that it entered COPY state `want`.
Status StartCopy(Connection& c, const std::string& sql, ExecStatusType want) {
  PGresult* r = PQexec(c.raw(), sql.c_str());
  QueryResult owned(r);
  if (r != nullptr && PQresultStatus(r) == want) return Status::Ok();
  Status s = c.ResultStatus(r);
  if (!s.ok()) return s;
  return Status::Internal("expected a COPY to start: " + sql.substr(0, 200));
}

}  // namespace

Result<CopyPipeResult> PipeCopy(Connection& from, const std::string& copy_out_sql,
                                Connection& to, const std::string& copy_in_sql,
                                const std::function<Status(size_t)>& on_chunk) {
  PGSHIFT_RETURN_IF_ERROR(StartCopy(to, copy_in_sql, PGRES_COPY_IN).WithContext("target"));
  Status s = StartCopy(from, copy_out_sql, PGRES_COPY_OUT);
  if (!s.ok()) {
    FailCopyIn(to, "the source's COPY did not start");
    return s.WithContext("source");
  }
  CopyPipeResult out;
  std::string buf;
  buf.reserve(kCopyPipeBuffer);
  auto send = [&]() -> Status {
    if (buf.empty()) return Status::Ok();
    if (on_chunk) PGSHIFT_RETURN_IF_ERROR(on_chunk(buf.size()));
    if (PQputCopyData(to.raw(), buf.data(), static_cast<int>(buf.size())) != 1) {
      return Status::Unavailable("target: " + to.ErrorMessage());
    }
    out.bytes += static_cast<int64_t>(buf.size());
    buf.clear();
    return Status::Ok();
  };
  // Rows arrive one CopyData message each; batching them saves a libpq call and a send() per
  // row on the receiving side.
  while (s.ok()) {
    char* row = nullptr;
    int n = PQgetCopyData(from.raw(), &row, /*async=*/0);
    if (n > 0) {
      buf.append(row, static_cast<size_t>(n));
      PQfreemem(row);
      if (buf.size() >= kCopyPipeBuffer) s = send();
      continue;
    }
    if (n == -1) break;  // the source's COPY ended; its result says how
    s = Status::Unavailable("source: " + from.ErrorMessage());
  }
  if (s.ok()) s = DrainResults(from, nullptr).WithContext("source");
  if (s.ok()) s = send();
  if (!s.ok()) {
    FailCopyIn(to, s.message());
    return s;
  }
  if (PQputCopyEnd(to.raw(), nullptr) != 1) {
    return Status::Unavailable("target: " + to.ErrorMessage());
  }
  PGSHIFT_RETURN_IF_ERROR(DrainResults(to, &out.rows).WithContext("target"));
  return out;
}

}  // namespace pgshift::pg
