#include "engine/copy.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <utility>

#include "common/clock.h"
#include "common/log.h"
#include "common/strings.h"
#include "engine/server_ops.h"
#include "pg/conninfo.h"
#include "pg/copy_pipe.h"

namespace pgshift::engine {

namespace {

constexpr int64_t kMiB = 1024 * 1024;
// A whole-table range at least this big is copied with TRUNCATE + COPY FREEZE in its
// transaction: its rows arrive frozen, so the index builds and the first VACUUM after the copy
// do not rewrite every page to set hint bits. Smaller tables are not worth the TRUNCATE.
constexpr int64_t kFreezeMinBytes = 4 * kMiB;
// Whole tables smaller than this are copied up to kBatchRanges to a target transaction.
constexpr int64_t kBatchRangeBytes = kMiB;
constexpr size_t kBatchRanges = 32;

constexpr const char* kCopyTablesSql = R"SQL(
CREATE TABLE IF NOT EXISTS _pgshift.copy_run (
  id int PRIMARY KEY CHECK (id = 1),
  slot text NOT NULL,
  snapshot text NOT NULL,
  lsn text NOT NULL,
  planned_at timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz);
CREATE TABLE IF NOT EXISTS _pgshift.copy_range (
  id int PRIMARY KEY,
  schema_name text NOT NULL,
  table_name text NOT NULL,
  kind text NOT NULL CHECK (kind IN ('all', 'pages', 'key')),
  key_column text,
  lo text,
  hi text,
  est_bytes bigint NOT NULL,
  done boolean NOT NULL DEFAULT false,
  rows bigint,
  bytes bigint,
  copied_at timestamptz);
)SQL";

// Facts of the tables to copy, in the order given (quoted names): size, pages, a one-column
// primary key, estimated rows.
constexpr const char* kTableFactsSql = R"SQL(
SELECT n.nspname, c.relname, pg_table_size(c.oid),
       pg_relation_size(c.oid) / current_setting('block_size')::int8,
       (SELECT a.attname FROM pg_index i
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
         WHERE i.indrelid = c.oid AND i.indisprimary AND i.indnkeyatts = 1),
       c.reltuples::int8
FROM unnest($1::text[]) WITH ORDINALITY AS q(name, i)
JOIN pg_class c ON c.oid = q.name::regclass
JOIN pg_namespace n ON n.oid = c.relnamespace
ORDER BY q.i
)SQL";

// Columns COPY carries (not dropped, not generated: those are computed on the target), with
// whether binary COPY of their type is safe between two servers: a built-in type (same OID on
// every server), with send/receive functions, not a reg* type (whose binary form is an OID
// that means something else on the other server), nor an array of one.
constexpr const char* kColumnsSql = R"SQL(
SELECT q.nsp, q.rel, a.attname, a.atttypid::int8,
       t.oid < 16384 AND t.typsend::oid <> 0 AND t.typreceive::oid <> 0
         AND coalesce(e.typname, t.typname) !~ '^reg' AS binary_ok
FROM unnest($1::text[], $2::text[]) AS q(nsp, rel)
JOIN pg_namespace n ON n.nspname = q.nsp
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = q.rel
JOIN pg_attribute a ON a.attrelid = c.oid
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A'
WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
ORDER BY q.nsp, q.rel, a.attnum
)SQL";

constexpr const char* kEncodingSql =
    "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()";

// Output settings both sides of a text COPY agree on, whatever the servers' defaults.
constexpr const char* kPinnedOutputSql =
    "SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; "
    "SET TimeZone = 'UTC'; SET statement_timeout = 0; SET lock_timeout = 0; ";

std::string Key(const std::string& schema, const std::string& table) {
  return schema + std::string(1, '\0') + table;
}

std::string KindName(CopyRange::Kind k) {
  switch (k) {
    case CopyRange::Kind::kPages: return "pages";
    case CopyRange::Kind::kKey: return "key";
    default: return "all";
  }
}

CopyRange::Kind ParseKind(const std::string& s) {
  if (s == "pages") return CopyRange::Kind::kPages;
  if (s == "key") return CopyRange::Kind::kKey;
  return CopyRange::Kind::kAll;
}

std::string Quoted(const pg::Connection& c, const std::string& schema, const std::string& table) {
  return c.QuoteIdent(schema) + "." + c.QuoteIdent(table);
}

// Key bounds that cut a table of `blocks` pages into `pieces` parts of about equal row
// counts, from a sample of its rows, in key order; empty when they cannot be read.
std::vector<std::string> SampleKeyBounds(pg::Connection& src, const std::string& quoted,
                                         const std::string& key, int64_t blocks, int pieces) {
  std::string fractions = "{";
  for (int i = 1; i < pieces; ++i) {
    fractions += (i > 1 ? "," : "") + std::to_string(static_cast<double>(i) / pieces);
  }
  fractions += "}";
  // About 500 pages of sample, whatever the table's size.
  double percent = std::clamp(100.0 * 500.0 / static_cast<double>(std::max<int64_t>(blocks, 1)),
                              0.01, 100.0);
  std::string k = src.QuoteIdent(key);
  auto r = src.Query("SELECT unnest(percentile_disc($1::float8[]) WITHIN GROUP (ORDER BY " + k +
                         "))::text FROM ONLY " + quoted + " TABLESAMPLE SYSTEM ($2)",
                     {fractions, std::to_string(percent)});
  std::vector<std::string> out;
  if (!r.ok()) {
    LogWarn("copy: sampling the key of " + quoted + " failed (" + r.status().message() +
            "); copying it in one piece");
    return out;
  }
  for (int i = 0; i < r->rows(); ++i) {
    if (r->IsNull(i, 0)) continue;
    std::string v = r->Get(i, 0);
    if (out.empty() || out.back() != v) out.push_back(v);
  }
  return out;
}

}  // namespace

std::string RangePredicate(const CopyRange& r, const pg::Connection& c) {
  std::vector<std::string> parts;
  if (r.kind == CopyRange::Kind::kPages) {
    if (r.lo) parts.push_back("ctid >= " + c.QuoteLiteral("(" + *r.lo + ",0)") + "::tid");
    if (r.hi) parts.push_back("ctid < " + c.QuoteLiteral("(" + *r.hi + ",0)") + "::tid");
  } else if (r.kind == CopyRange::Kind::kKey) {
    // An untyped literal takes the key column's type, so the comparison is the key's own.
    std::string k = c.QuoteIdent(r.key_column);
    if (r.lo) parts.push_back(k + " >= " + c.QuoteLiteral(*r.lo));
    if (r.hi) parts.push_back(k + " < " + c.QuoteLiteral(*r.hi));
  }
  return Join(parts, " AND ");
}

int64_t RangeBytes(int64_t total_bytes, int jobs) {
  int64_t per = total_bytes / (std::max(jobs, 1) * 8);
  return std::clamp<int64_t>(per, 8 * kMiB, 1024 * kMiB);
}

std::vector<CopyRange> SplitByPages(const std::string& schema, const std::string& table,
                                    int64_t bytes, int64_t blocks, int64_t range_bytes) {
  int64_t pieces = std::min<int64_t>(blocks, std::llround(static_cast<double>(bytes) /
                                                          static_cast<double>(range_bytes)));
  if (pieces < 2) {
    CopyRange r;
    r.schema = schema;
    r.table = table;
    r.est_bytes = bytes;
    return {r};
  }
  std::vector<CopyRange> out;
  for (int64_t i = 0; i < pieces; ++i) {
    CopyRange r;
    r.schema = schema;
    r.table = table;
    r.kind = CopyRange::Kind::kPages;
    if (i > 0) r.lo = std::to_string(blocks * i / pieces);
    if (i + 1 < pieces) r.hi = std::to_string(blocks * (i + 1) / pieces);
    r.est_bytes = bytes / pieces;
    out.push_back(r);
  }
  return out;
}

std::vector<CopyRange> SplitByKey(const std::string& schema, const std::string& table,
                                  int64_t bytes, const std::string& key,
                                  const std::vector<std::string>& bounds) {
  std::vector<CopyRange> out;
  const size_t pieces = bounds.size() + 1;
  for (size_t i = 0; i < pieces; ++i) {
    CopyRange r;
    r.schema = schema;
    r.table = table;
    r.est_bytes = bytes / static_cast<int64_t>(pieces);
    if (pieces > 1) {
      r.kind = CopyRange::Kind::kKey;
      r.key_column = key;
      if (i > 0) r.lo = bounds[i - 1];
      if (i < bounds.size()) r.hi = bounds[i];
    }
    out.push_back(r);
  }
  return out;
}

bool CopyPlan::AllDone() const {
  return std::all_of(ranges.begin(), ranges.end(), [](const CopyRange& r) { return r.done; });
}

Status EnsureCopyTables(pg::Connection& target) {
  return target.Exec(kCopyTablesSql).WithContext("the copy's bookkeeping on the target");
}

Result<CopyPlan> LoadPlan(pg::Connection& target) {
  CopyPlan plan;
  PGSHIFT_ASSIGN_OR_RETURN(pg::QueryResult run,
                           target.Query("SELECT slot, snapshot, lsn FROM _pgshift.copy_run"));
  if (run.rows() == 0) return plan;
  plan.slot = run.Get(0, 0);
  plan.snapshot = run.Get(0, 1);
  plan.lsn = run.Get(0, 2);
  PGSHIFT_ASSIGN_OR_RETURN(
      pg::QueryResult r,
      target.Query("SELECT id, schema_name, table_name, kind, key_column, lo, hi, est_bytes, "
                   "done, coalesce(rows, 0) FROM _pgshift.copy_range ORDER BY id"));
  for (int i = 0; i < r.rows(); ++i) {
    CopyRange c;
    c.id = std::stoi(r.Get(i, 0));
    c.schema = r.Get(i, 1);
    c.table = r.Get(i, 2);
    c.kind = ParseKind(r.Get(i, 3));
    c.key_column = r.Get(i, 4);
    if (!r.IsNull(i, 5)) c.lo = r.Get(i, 5);
    if (!r.IsNull(i, 6)) c.hi = r.Get(i, 6);
    c.est_bytes = std::stoll(r.Get(i, 7));
    c.done = r.Get(i, 8) == "t";
    c.rows = std::stoll(r.Get(i, 9));
    plan.ranges.push_back(c);
  }
  return plan;
}

Result<std::unique_ptr<pg::Connection>> OpenSnapshotSession(const std::string& source_dsn,
                                                            const std::string& db,
                                                            const std::string& snapshot,
                                                            const std::string& encoding) {
  PGSHIFT_ASSIGN_OR_RETURN(ConnPtr c, Connect(source_dsn, db, "source"));
  // row_security off: a table whose policies would hide rows from this role fails loudly
  // instead of being copied in part.
  std::string setup = std::string(kPinnedOutputSql) +
                      "SET idle_in_transaction_session_timeout = 0; SET bytea_output = 'hex'; "
                      "SET row_security = off; ";
  if (!encoding.empty()) setup += "SET client_encoding = " + c->QuoteLiteral(encoding) + "; ";
  PGSHIFT_RETURN_IF_ERROR(c->Exec(setup).WithContext("source " + db));
  PGSHIFT_RETURN_IF_ERROR(c->Exec("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"));
  Status s = c->Exec("SET TRANSACTION SNAPSHOT " + c->QuoteLiteral(snapshot));
  if (!s.ok()) {
    return Status::FailedPrecondition("source " + db + ": snapshot " + snapshot +
                                      " is gone: " + s.message());
  }
  return c;
}

Result<CopyPlan> MakePlan(pg::Connection& source, pg::Connection& target,
                          const std::vector<std::string>& tables, int jobs,
                          const std::string& slot, const std::string& snapshot,
                          const std::string& lsn) {
  PGSHIFT_ASSIGN_OR_RETURN(pg::QueryResult facts,
                           source.Query(kTableFactsSql, {pg::TextArrayLiteral(tables)}));
  int64_t total = 0;
  for (int i = 0; i < facts.rows(); ++i) total += std::stoll(facts.Get(i, 2));
  const int64_t range_bytes = RangeBytes(total, jobs);
  CopyPlan plan;
  plan.slot = slot;
  plan.snapshot = snapshot;
  plan.lsn = lsn;
  for (int i = 0; i < facts.rows(); ++i) {
    const std::string schema = facts.Get(i, 0), table = facts.Get(i, 1);
    const int64_t bytes = std::stoll(facts.Get(i, 2)), blocks = std::stoll(facts.Get(i, 3));
    const std::string key = facts.Get(i, 4);
    std::vector<CopyRange> ranges;
    int pieces = static_cast<int>(std::llround(static_cast<double>(bytes) / range_bytes));
    if (pieces >= 2 && source.ServerMajor() >= 14) {
      ranges = SplitByPages(schema, table, bytes, blocks, range_bytes);
    } else if (pieces >= 2 && !key.empty()) {
      ranges = SplitByKey(schema, table, bytes, key,
                          SampleKeyBounds(source, Quoted(source, schema, table), key, blocks,
                                          std::min(pieces, 1000)));
    } else {
      ranges = SplitByPages(schema, table, bytes, blocks, INT64_MAX);
    }
    for (auto& r : ranges) {
      r.id = static_cast<int>(plan.ranges.size()) + 1;
      plan.ranges.push_back(std::move(r));
    }
  }

  // One transaction: the new plan replaces the old, and whatever the old one copied goes.
  PGSHIFT_ASSIGN_OR_RETURN(std::string old_ranges,
                           target.QueryValue("SELECT count(*) FROM _pgshift.copy_range"));
  std::string sql = "BEGIN; ";
  if (old_ranges != "0") {
    std::set<std::string> names;
    for (const auto& r : plan.ranges) names.insert(Quoted(target, r.schema, r.table));
    sql += "TRUNCATE ONLY " + Join({names.begin(), names.end()}, ", ") + "; ";
  }
  sql += "DELETE FROM _pgshift.copy_range; DELETE FROM _pgshift.copy_run; ";
  sql += "INSERT INTO _pgshift.copy_run (id, slot, snapshot, lsn) VALUES (1, " +
         target.QuoteLiteral(slot) + ", " + target.QuoteLiteral(snapshot) + ", " +
         target.QuoteLiteral(lsn) + "); ";
  auto lit = [&target](const std::optional<std::string>& v) {
    return v ? target.QuoteLiteral(*v) : std::string("NULL");
  };
  for (size_t i = 0; i < plan.ranges.size(); i += 500) {
    std::vector<std::string> rows;
    for (size_t k = i; k < std::min(plan.ranges.size(), i + 500); ++k) {
      const CopyRange& r = plan.ranges[k];
      rows.push_back("(" + std::to_string(r.id) + ", " + target.QuoteLiteral(r.schema) + ", " +
                     target.QuoteLiteral(r.table) + ", " + target.QuoteLiteral(KindName(r.kind)) +
                     ", " + lit(r.key_column.empty() ? std::nullopt : std::optional(r.key_column)) +
                     ", " + lit(r.lo) + ", " + lit(r.hi) + ", " + std::to_string(r.est_bytes) +
                     ")");
    }
    sql += "INSERT INTO _pgshift.copy_range (id, schema_name, table_name, kind, key_column, lo, "
           "hi, est_bytes) VALUES " +
           Join(rows, ", ") + "; ";
  }
  sql += "COMMIT";
  Status s = target.Exec(sql);
  if (!s.ok()) {
    (void)target.Exec("ROLLBACK");
    return s.WithContext("storing the copy's plan on the target");
  }
  return plan;
}

int64_t RateLimiter::Reserve(size_t n, int64_t now_us) {
  if (rate_ <= 0) return now_us;
  std::lock_guard<std::mutex> l(mu_);
  const int64_t start = std::max(now_us, next_);
  next_ = start + static_cast<int64_t>(static_cast<double>(n) * 1e6 / static_cast<double>(rate_));
  return start;
}

bool RateLimiter::Acquire(size_t n, const std::atomic<bool>& abort) {
  if (rate_ <= 0) return true;
  const int64_t start = Reserve(n, MonotonicMicros());
  while (true) {
    int64_t left = start - MonotonicMicros();
    if (left <= 0) return true;
    if (abort.load()) return false;
    SleepMillis(std::clamp<int64_t>(left / 1000, 1, 50));
  }
}

ParallelCopy::ParallelCopy(CopyOptions options) : options_(std::move(options)) {}

ParallelCopy::~ParallelCopy() {
  Stop();
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
}

Result<std::unique_ptr<ParallelCopy>> ParallelCopy::Start(const CopyOptions& options,
                                                          const CopyPlan& plan) {
  std::unique_ptr<ParallelCopy> pc(new ParallelCopy(options));
  pc->snapshot_ = plan.snapshot;
  pc->limiter_ = std::make_unique<RateLimiter>(options.rate);
  PGSHIFT_RETURN_IF_ERROR(pc->Describe(plan));
  int jobs = std::max(1, std::min<int>(options.jobs, static_cast<int>(pc->todo_.size())));
  if (pc->todo_.empty()) return pc;
  pc->running_.store(jobs);
  for (int i = 0; i < jobs; ++i) pc->slots_.push_back(std::make_unique<Slot>());
  for (int i = 0; i < jobs; ++i) pc->threads_.emplace_back([p = pc.get(), i] { p->Job(i); });
  return pc;
}

// Reads both sides' columns and encodings; decides each table's column list and format.
Status ParallelCopy::Describe(const CopyPlan& plan) {
  PGSHIFT_ASSIGN_OR_RETURN(ConnPtr src, Connect(options_.source_dsn, options_.database, "source"));
  PGSHIFT_ASSIGN_OR_RETURN(ConnPtr dst, Connect(options_.target_dsn, options_.database, "target"));
  source_major_ = src->ServerMajor();
  PGSHIFT_ASSIGN_OR_RETURN(std::string src_encoding, src->QueryValue(kEncodingSql));
  PGSHIFT_ASSIGN_OR_RETURN(encoding_, dst->QueryValue(kEncodingSql));
  std::vector<std::string> schemas, names;
  for (const auto& r : plan.ranges) {
    auto [it, added] = tables_.try_emplace(Key(r.schema, r.table));
    if (added) {
      it->second.quoted = Quoted(*dst, r.schema, r.table);
      schemas.push_back(r.schema);
      names.push_back(r.table);
    }
  }
  // (type oid, binary safe) of each column by table, on one side.
  using Columns = std::map<std::string, std::vector<std::tuple<std::string, std::string, bool>>>;
  auto read = [&](pg::Connection& c) -> Result<Columns> {
    PGSHIFT_ASSIGN_OR_RETURN(
        pg::QueryResult r,
        c.Query(kColumnsSql, {pg::TextArrayLiteral(schemas), pg::TextArrayLiteral(names)}));
    Columns out;
    for (int i = 0; i < r.rows(); ++i) {
      out[Key(r.Get(i, 0), r.Get(i, 1))].emplace_back(r.Get(i, 2), r.Get(i, 3), r.Get(i, 4) == "t");
    }
    return out;
  };
  PGSHIFT_ASSIGN_OR_RETURN(Columns scols, read(*src));
  PGSHIFT_ASSIGN_OR_RETURN(Columns dcols, read(*dst));
  const bool same_encoding = src_encoding == encoding_;
  for (auto& [key, t] : tables_) {
    const auto& s = scols[key];
    const auto& d = dcols[key];
    std::map<std::string, std::pair<std::string, bool>> target_by_name;
    for (const auto& [name, type, ok] : d) target_by_name[name] = {type, ok};
    bool binary = same_encoding;
    std::vector<std::string> cols;
    for (const auto& [name, type, ok] : s) {
      auto it = target_by_name.find(name);
      if (it == target_by_name.end()) {
        return Status::FailedPrecondition("table " + t.quoted + ": column " + name +
                                          " is on the source but not on the target; did its "
                                          "schema change during the migration?");
      }
      binary = binary && ok && it->second.second && it->second.first == type;
      cols.push_back(dst->QuoteIdent(name));
    }
    if (cols.size() != d.size()) {
      return Status::FailedPrecondition("table " + t.quoted +
                                        " has columns on the target that the source lacks");
    }
    t.columns = Join(cols, ", ");
    t.binary = binary;
  }
  for (const auto& r : plan.ranges) {
    Table& t = tables_[Key(r.schema, r.table)];
    t.bytes += r.est_bytes;
    progress_.ranges_total++;
    progress_.bytes_total += r.est_bytes;
    if (r.done) {
      progress_.ranges_done++;
      progress_.bytes_done += r.est_bytes;
      progress_.rows += r.rows;
    } else {
      t.ranges_left++;
      todo_.push_back(r);
    }
  }
  progress_.tables_total = static_cast<int>(tables_.size());
  for (const auto& [key, t] : tables_) {
    if (t.ranges_left == 0) {
      progress_.tables_done++;
      finished_.emplace_back(t.quoted, t.bytes);
    }
    if (t.binary) progress_.binary_tables++;
  }
  // Biggest tables first, each table's ranges together: the biggest table is done while the
  // rest copies, so its index builds (the longest) overlap the copy instead of following it.
  std::stable_sort(todo_.begin(), todo_.end(), [this](const CopyRange& a, const CopyRange& b) {
    const int64_t ta = tables_.at(Key(a.schema, a.table)).bytes;
    const int64_t tb = tables_.at(Key(b.schema, b.table)).bytes;
    if (ta != tb) return ta > tb;
    if (a.schema != b.schema || a.table != b.table) return Key(a.schema, a.table) < Key(b.schema, b.table);
    return a.id < b.id;
  });
  return Status::Ok();
}

void ParallelCopy::Fail(const Status& s) {
  std::lock_guard<std::mutex> l(mu_);
  if (first_error_.ok()) first_error_ = s;
  drain_.store(true);
}

void ParallelCopy::Job(int index) {
  Slot& slot = *slots_[index];
  ConnPtr src, dst;
  auto open = [&]() -> Status {
    src.reset();
    dst.reset();
    PGSHIFT_ASSIGN_OR_RETURN(src, OpenSnapshotSession(options_.source_dsn, options_.database,
                                                      snapshot_, encoding_));
    PGSHIFT_ASSIGN_OR_RETURN(dst, Connect(options_.target_dsn, options_.database, "target"));
    PGSHIFT_RETURN_IF_ERROR(dst->Exec(std::string(kPinnedOutputSql) +
                                      "SET synchronous_commit = off; SET client_encoding = " +
                                      dst->QuoteLiteral(encoding_)));
    // Without user triggers and row-by-row foreign key checks (none exist before post-data,
    // unless a resumed run's target has them); only roles allowed to may set it.
    if (!dst->Exec("SET session_replication_role = replica").ok()) {
      LogDebug("copy: session_replication_role = replica not allowed on the target");
    }
    return Status::Ok();
  };
  Status s = open();
  while (s.ok() && !abort_.load() && !drain_.load()) {
    size_t i = next_.fetch_add(1);
    if (i >= todo_.size()) break;
    // Small tables go several to a transaction: their cost is round trips, not rows. todo_ is
    // biggest first, so once one is small, all that follow are.
    std::vector<const CopyRange*> batch = {&todo_[i]};
    int64_t batch_bytes = todo_[i].est_bytes;
    while (todo_[i].kind == CopyRange::Kind::kAll && todo_[i].est_bytes < kBatchRangeBytes &&
           batch.size() < kBatchRanges && batch_bytes < kBatchRangeBytes * 4) {
      size_t k = next_.fetch_add(1);
      if (k >= todo_.size()) break;
      batch.push_back(&todo_[k]);
      batch_bytes += todo_[k].est_bytes;
    }
    // A broken connection (a server restarted, the network) is retried on new sessions; the
    // transaction rolled back, so nothing of it is on the target.
    for (int attempt = 0; attempt < 3; ++attempt) {
      s = CopyRanges(*src, *dst, batch, slot);
      if (s.ok() || abort_.load() || s.code() != StatusCode::kUnavailable) break;
      LogWarn("copy: " + s.message() + "; retrying on new sessions");
      SleepMillis(500 * (attempt + 1));
      Status o = open();
      if (!o.ok()) {
        s = o;
        break;
      }
    }
  }
  if (!s.ok() && !(abort_.load() && s.code() == StatusCode::kAborted)) Fail(s);
  running_.fetch_sub(1);
}

Status ParallelCopy::CopyRanges(pg::Connection& src, pg::Connection& dst,
                                const std::vector<const CopyRange*>& batch, Slot& slot) {
  // A lone whole table of some size is copied frozen (see kFreezeMinBytes).
  const CopyRange& first = *batch.front();
  const bool freeze = batch.size() == 1 && first.kind == CopyRange::Kind::kAll &&
                      first.est_bytes >= kFreezeMinBytes;
  PGSHIFT_RETURN_IF_ERROR(dst.Exec(
      freeze ? "BEGIN; TRUNCATE ONLY " + tables_.at(Key(first.schema, first.table)).quoted
             : "BEGIN"));
  std::vector<std::string> ids, rows, bytes;
  std::vector<pg::CopyPipeResult> results;
  Status s;
  for (const CopyRange* r : batch) {
    auto copied = CopyOne(src, dst, *r, freeze, slot);
    if (!copied.ok()) {
      s = copied.status().WithContext(
          "copying " + tables_.at(Key(r->schema, r->table)).quoted +
          (r->kind == CopyRange::Kind::kAll ? "" : " (range " + std::to_string(r->id) + ")"));
      break;
    }
    results.push_back(*copied);
    ids.push_back(std::to_string(r->id));
    rows.push_back(std::to_string(copied->rows));
    bytes.push_back(std::to_string(copied->bytes));
  }
  if (s.ok()) {
    auto marked = dst.Query(
        "UPDATE _pgshift.copy_range c SET done = true, rows = v.rows, bytes = v.bytes, "
        "copied_at = now() FROM unnest($1::int[], $2::int8[], $3::int8[]) AS v(id, rows, bytes) "
        "WHERE c.id = v.id AND NOT c.done",
        {"{" + Join(ids, ",") + "}", "{" + Join(rows, ",") + "}", "{" + Join(bytes, ",") + "}"});
    if (!marked.ok()) {
      s = marked.status();
    } else if (marked->AffectedRows() != static_cast<long long>(batch.size())) {
      s = Status::Aborted("ranges " + Join(ids, ", ") +
                          " were copied by another pgshift run meanwhile");
    }
  }
  if (s.ok()) s = dst.Exec("COMMIT");
  slot.streamed.store(0);
  slot.est.store(0);
  if (!s.ok()) {
    (void)dst.Exec("ROLLBACK");
    return s;
  }
  std::lock_guard<std::mutex> l(mu_);
  for (size_t i = 0; i < batch.size(); ++i) {
    const CopyRange& r = *batch[i];
    progress_.ranges_done++;
    progress_.bytes_done += r.est_bytes;
    progress_.bytes_streamed += results[i].bytes;
    progress_.rows += results[i].rows;
    if (Table& done = tables_.at(Key(r.schema, r.table)); --done.ranges_left == 0) {
      progress_.tables_done++;
      finished_.emplace_back(done.quoted, done.bytes);
    }
  }
  return Status::Ok();
}

Result<pg::CopyPipeResult> ParallelCopy::CopyOne(pg::Connection& src, pg::Connection& dst,
                                                 const CopyRange& r, bool freeze, Slot& slot) {
  const Table& t = tables_.at(Key(r.schema, r.table));
  const std::string format = t.binary ? "FORMAT binary" : "FORMAT text";
  const std::string cols = t.columns.empty() ? "" : " (" + t.columns + ")";
  const std::string where = RangePredicate(r, src);
  std::string out_sql = where.empty()
                            ? "COPY " + t.quoted + cols + " TO STDOUT WITH (" + format + ")"
                            : "COPY (SELECT " + t.columns + " FROM ONLY " + t.quoted + " WHERE " +
                                  where + ") TO STDOUT WITH (" + format + ")";
  std::string in_sql = "COPY " + t.quoted + cols + " FROM STDIN WITH (" + format +
                       (freeze ? ", FREEZE" : "") + ")";
  // Before TID range scans (PostgreSQL 14) key ranges come from the key's index; a plan that
  // scans the whole table for each range would read it once per range.
  const bool key_range = r.kind == CopyRange::Kind::kKey;
  if (key_range) PGSHIFT_RETURN_IF_ERROR(src.Exec("SET enable_seqscan = off"));
  slot.est.store(slot.est.load() + r.est_bytes);
  auto copied = pg::PipeCopy(src, out_sql, dst, in_sql, [&](size_t n) -> Status {
    if (abort_.load() || !limiter_->Acquire(n, abort_)) return Status::Aborted("copy stopped");
    slot.streamed.fetch_add(static_cast<int64_t>(n));
    return Status::Ok();
  });
  if (copied.ok() && key_range) PGSHIFT_RETURN_IF_ERROR(src.Exec("SET enable_seqscan = on"));
  return copied;
}

Status ParallelCopy::Wait() {
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  std::lock_guard<std::mutex> l(mu_);
  if (!first_error_.ok()) return first_error_;
  if (progress_.ranges_done < progress_.ranges_total) return Status::Aborted("copy stopped");
  return Status::Ok();
}

CopyProgress ParallelCopy::Progress() const {
  std::lock_guard<std::mutex> l(mu_);
  CopyProgress p = progress_;
  for (const auto& s : slots_) {
    int64_t streamed = s->streamed.load();
    p.bytes_done += std::min(streamed, s->est.load());
    p.bytes_streamed += streamed;
  }
  return p;
}

std::vector<std::pair<std::string, int64_t>> ParallelCopy::TakeFinishedTables() {
  std::lock_guard<std::mutex> l(mu_);
  return std::exchange(finished_, {});
}

}  // namespace pgshift::engine
