#include "engine/verify.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <deque>
#include <iterator>
#include <map>
#include <set>
#include <thread>
#include <tuple>
#include <utility>

#include "common/clock.h"
#include "common/strings.h"
#include "engine/inspect.h"
#include "pg/conninfo.h"

namespace pgshift::engine {

using pg::Connection;
using pg::QueryResult;
using verify::KeyRange;
using verify::KeyValues;
using verify::RowObservation;
using verify::Sql;
using verify::TableQueries;
using verify::TableShape;

namespace verify {
namespace {

using ConnPtr = std::unique_ptr<Connection>;

// Every setting that changes how a value is rendered as text, pinned to one value on both
// servers; the session is read-only so that a bug here cannot write. No timeout may end a
// long scan, nor the switch-point snapshot held idle in its transaction.
constexpr char kSessionSetup[] =
    "SET default_transaction_read_only = on; "
    "SET TimeZone = 'UTC'; "
    "SET DateStyle = 'ISO, YMD'; "
    "SET IntervalStyle = 'postgres'; "
    "SET extra_float_digits = 1; "
    "SET bytea_output = 'hex'; "
    "SET lc_monetary = 'C'; "
    "SET statement_timeout = 0; "
    "SET idle_in_transaction_session_timeout = 0; "
    "SET search_path = pg_catalog";

// Columns, their types and the key of the tables named in $1 (a text[] of qualified names).
// The key is the primary key, else the replica identity index; only its key columns count
// (not INCLUDE ones). A table without columns gives one row with NULL column.
constexpr char kColumnsSql[] = R"(
SELECT n.nspname AS schema, c.relname AS table, a.attname AS column,
       tn.nspname AS type_schema, ty.typname AS type_name,
       CASE WHEN ty.typtype = 'd' THEN (SELECT b.typname FROM pg_type b
                                        WHERE b.oid = ty.typbasetype
                                          AND b.typnamespace = 'pg_catalog'::regnamespace)
            WHEN ty.typnamespace = 'pg_catalog'::regnamespace THEN ty.typname END AS builtin,
       ty.typcategory AS category, a.atttypmod AS typmod,
       coalesce((SELECT co.collisdeterministic FROM pg_collation co
                 WHERE co.oid = a.attcollation), true) AS deterministic,
       array_position((k.indkey::int2[])[0:k.indnkeyatts - 1], a.attnum) AS key_position,
       k.indisprimary AS key_is_pk
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN LATERAL (SELECT i.indkey, i.indnkeyatts, i.indisprimary FROM pg_index i
                   WHERE i.indrelid = c.oid AND i.indisvalid
                     AND (i.indisprimary OR i.indisreplident)
                   ORDER BY i.indisprimary DESC LIMIT 1) k ON true
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_type ty ON ty.oid = a.atttypid
LEFT JOIN pg_namespace tn ON tn.oid = ty.typnamespace
WHERE c.oid = ANY($1::text[]::regclass[])
ORDER BY n.nspname, c.relname, a.attnum)";

using TableName = std::pair<std::string, std::string>;  // schema, table

struct CatalogEntry {
  TableInfo info;
  TableShape shape;
};
using Catalog = std::map<TableName, CatalogEntry>;

Result<Catalog> LoadCatalog(Connection& conn) {
  PGSHIFT_ASSIGN_OR_RETURN(std::vector<TableInfo> tables, ListTables(conn));
  Catalog catalog;
  std::vector<std::string> names;
  for (TableInfo& t : tables) {
    if (t.partitioned) continue;  // holds no rows; its partitions are listed
    if (IsMigrated(t)) names.push_back(conn.QuoteIdent(t.schema) + "." + conn.QuoteIdent(t.name));
    TableName key{t.schema, t.name};
    catalog[key].info = std::move(t);
  }
  if (names.empty()) return catalog;
  PGSHIFT_ASSIGN_OR_RETURN(QueryResult r, conn.Query(kColumnsSql, {pg::TextArrayLiteral(names)}));
  std::map<TableName, std::map<long long, size_t>> key_by_position;
  for (int i = 0; i < r.rows(); ++i) {
    TableName name{r.Get(i, "schema"), r.Get(i, "table")};
    CatalogEntry& e = catalog[name];
    auto column = r.GetOpt(i, "column");
    if (!column) continue;
    Column col;
    col.name = *column;
    col.type_schema = r.Get(i, "type_schema");
    col.type_name = r.Get(i, "type_name");
    col.builtin = r.Get(i, "builtin");
    col.typmod = static_cast<int>(r.GetInt(i, "typmod"));
    col.numeric = r.Get(i, "category") == "N";
    col.deterministic = r.GetBool(i, "deterministic");
    e.shape.columns.push_back(std::move(col));
    if (auto pos = r.GetOpt(i, "key_position")) {
      key_by_position[name][std::strtoll(pos->c_str(), nullptr, 10)] = e.shape.columns.size() - 1;
      e.shape.key_source = r.GetBool(i, "key_is_pk") ? "primary key" : "replica identity index";
    }
  }
  for (auto& [name, cols] : key_by_position) {
    for (auto& [pos, index] : cols) catalog[name].shape.key.push_back(index);
  }
  return catalog;
}

std::string ColumnDifference(const TableShape& src, const TableShape& tgt) {
  std::set<std::string> s, t;
  for (const Column& c : src.columns) s.insert(c.name);
  for (const Column& c : tgt.columns) t.insert(c.name);
  std::vector<std::string> only_src, only_tgt;
  std::set_difference(s.begin(), s.end(), t.begin(), t.end(), std::back_inserter(only_src));
  std::set_difference(t.begin(), t.end(), s.begin(), s.end(), std::back_inserter(only_tgt));
  std::vector<std::string> parts;
  if (!only_src.empty()) parts.push_back("only on source: " + Join(only_src, ", "));
  if (!only_tgt.empty()) parts.push_back("only on target: " + Join(only_tgt, ", "));
  return parts.empty() ? "" : "columns differ (" + Join(parts, "; ") + ")";
}

Result<HashProbe> Probe(Connection& c) {
  HashProbe p;
  PGSHIFT_ASSIGN_OR_RETURN(QueryResult r, c.Query(kHashProbeSql));
  p.encoding = r.Get(0, 0);
  p.hash = r.Get(0, 1);
  p.md5 = c.Query(kMd5ProbeSql).ok();
  return p;
}

int64_t ToInt(const std::string& s) { return std::strtoll(s.c_str(), nullptr, 10); }

// One table being compared; shared by the workers that work on its ranges.
struct TableJob {
  std::string db;
  TableName name;
  TableShape shape;  // the source's
  std::unique_ptr<TableQueries> queries;
  int64_t estimated_rows = 0;
  int64_t started_us = 0;

  std::mutex mu;  // guards what follows
  TableVerification result;
  int64_t source_rows = 0, target_rows = 0;
  HashSum source_sum, target_sum;
  std::set<KeyValues> candidates;  // keys whose rows differed in a range read
  int64_t untracked = 0;           // candidates beyond kMaxTrackedKeys
  int64_t pending = 0;             // tasks not done; the last one finalizes
};

struct Task {
  enum Kind { kPlan, kRange, kWhole } kind;
  TableJob* table;
  KeyRange range;
};

struct Pair {
  ConnPtr source, target;
};

// Aggregate results of one range on one side.
struct Agg {
  int64_t rows = 0;
  std::string sum;
  bool operator==(const Agg& o) const { return rows == o.rows && sum == o.sum; }
};

Agg ToAgg(const QueryResult& r) { return {ToInt(r.Get(0, 0)), r.Get(0, 1)}; }

// Rows of a range or key list: key -> observation.
std::map<KeyValues, RowObservation> ToRows(const QueryResult& r, size_t key_columns) {
  std::map<KeyValues, RowObservation> out;
  for (int i = 0; i < r.rows(); ++i) {
    KeyValues k;
    for (size_t c = 0; c < key_columns; ++c) k.push_back(r.Get(i, static_cast<int>(c)));
    out[std::move(k)] = {true, r.Get(i, static_cast<int>(key_columns)),
                         r.Get(i, static_cast<int>(key_columns + 1))};
  }
  return out;
}

// Where the workers spend their time (summed over workers), for the report.
enum Spent { kPlanning, kFirstPass, kNarrowing, kByKey, kWholeTables, kSettling, kSpentKinds };
constexpr const char* kSpentNames[kSpentKinds] = {
    "planning (key sample)", "first pass (ranges, both sides at once)",
    "narrowing differing ranges", "reading differing rows by key",
    "tables without a key (whole)", "waiting for replication (settle)"};

class SpentTimer {
 public:
  explicit SpentTimer(std::atomic<int64_t>& into) : into_(into), start_(MonotonicMicros()) {}
  ~SpentTimer() { into_ += MonotonicMicros() - start_; }
  SpentTimer(const SpentTimer&) = delete;
  SpentTimer& operator=(const SpentTimer&) = delete;

 private:
  std::atomic<int64_t>& into_;
  int64_t start_;
};

constexpr int kFanout = 16;
constexpr int kMaxDepth = 12;
constexpr int kMaxBucketsNarrowed = 16;

class Comparison {
 public:
  Comparison(VerifyMode mode, std::string source_dsn, std::string target_dsn,
             const VerifyOptions& options)
      : mode_(mode),
        source_dsn_(std::move(source_dsn)),
        target_dsn_(std::move(target_dsn)),
        options_(options) {}

  Result<VerifyReport> Run(std::vector<DatabaseSessions> dbs) {
    const int64_t start = MonotonicMicros();
    VerifyReport report;
    report.level = options_.level;
    report.mode = mode_;
    report.jobs = std::max(1, options_.jobs);
    std::set<std::string> methods;
    for (DatabaseSessions& d : dbs) {
      PGSHIFT_ASSIGN_OR_RETURN(HashMethod m, Prepare(d));
      methods.insert(HashMethodName(m));
      snapshots_[d.database] = {d.source_snapshot, d.target_snapshot};
    }
    report.hash = Join(std::vector<std::string>(methods.begin(), methods.end()), ", ");

    std::vector<std::thread> workers;
    for (int i = 0; i < report.jobs; ++i) workers.emplace_back([this] { Work(); });
    for (auto& w : workers) w.join();
    if (!error_.ok()) return error_;

    for (TableVerification& t : finished_) report.tables.push_back(std::move(t));
    std::sort(report.tables.begin(), report.tables.end(), [](const auto& a, const auto& b) {
      return std::tie(a.database, a.schema, a.table) < std::tie(b.database, b.schema, b.table);
    });
    report.seconds = static_cast<double>(MonotonicMicros() - start) / 1e6;
    for (int i = 0; i < kSpentKinds; ++i) {
      report.worker_seconds.emplace_back(kSpentNames[i], static_cast<double>(spent_[i]) / 1e6);
    }
    return report;
  }

 private:
  bool hashes() const { return options_.level == VerifyLevel::kChecksum; }
  bool live() const { return mode_ == VerifyMode::kConvergence; }

  // Reads both catalogs, decides what to compare and queues it. Runs before the workers.
  Result<HashMethod> Prepare(DatabaseSessions& d) {
    auto side_error = [&](const char* side, const Status& s) {
      return s.WithContext(std::string(side) + " database \"" + d.database + "\"");
    };
    auto src_catalog = LoadCatalog(*d.source);
    if (!src_catalog.ok()) return side_error("source", src_catalog.status());
    auto tgt_catalog = LoadCatalog(*d.target);
    if (!tgt_catalog.ok()) return side_error("target", tgt_catalog.status());
    auto src_probe = Probe(*d.source);
    if (!src_probe.ok()) return side_error("source", src_probe.status());
    auto tgt_probe = Probe(*d.target);
    if (!tgt_probe.ok()) return side_error("target", tgt_probe.status());
    HashMethod method = options_.hash.value_or(ChooseHashMethod(*src_probe, *tgt_probe));

    std::set<TableName> names;
    for (const auto& [name, e] : *src_catalog) names.insert(name);
    for (const auto& [name, e] : *tgt_catalog) names.insert(name);
    std::vector<TableJob*> jobs;
    for (const TableName& name : names) {
      TableVerification v;
      v.database = d.database;
      v.schema = name.first;
      v.table = name.second;
      auto s = src_catalog->find(name);
      auto t = tgt_catalog->find(name);
      if (s != src_catalog->end() && !IsMigrated(s->second.info)) {
        v.result = TableResult::kSkipped;
        v.note = "not compared: " + NotMigratedReason(s->second.info);
        Finish(std::move(v));
        continue;
      }
      if (s == src_catalog->end() || t == tgt_catalog->end()) {
        v.note = s == src_catalog->end() ? "missing on source" : "missing on target";
        Finish(std::move(v));
        continue;
      }
      if (!IsMigrated(t->second.info)) {
        v.note = "on the target: " + NotMigratedReason(t->second.info);
        Finish(std::move(v));
        continue;
      }
      std::string diff = ColumnDifference(s->second.shape, t->second.shape);
      if (!diff.empty()) {
        v.note = diff;
        Finish(std::move(v));
        continue;
      }
      auto job = std::make_unique<TableJob>();
      job->db = d.database;
      job->name = name;
      job->shape = s->second.shape;
      const TableInfo& info = s->second.info;
      // reltuples is unknown (0 here) until the table was first analyzed or vacuumed.
      job->estimated_rows = std::max<int64_t>(info.estimated_rows, info.bytes / 128);
      Connection* q = d.source.get();
      job->queries =
          std::make_unique<TableQueries>(name.first, name.second, job->shape, method, hashes(),
                                         [q](std::string_view id) { return q->QuoteIdent(id); });
      job->result = std::move(v);
      if (job->shape.keyed()) {
        std::vector<std::string> cols;
        for (size_t k : job->shape.key) cols.push_back(job->shape.columns[k].name);
        job->result.key = "(" + Join(cols, ", ") + ")";
      }
      jobs.push_back(job.get());
      tables_.push_back(std::move(job));
    }
    // Biggest first: the long tables start early and the small ones fill the gaps.
    std::stable_sort(jobs.begin(), jobs.end(), [](const TableJob* a, const TableJob* b) {
      return a->estimated_rows > b->estimated_rows;
    });
    std::lock_guard<std::mutex> lock(queue_mu_);
    for (TableJob* j : jobs) {
      j->pending = 1;
      queue_.push_back({j->shape.keyed() ? Task::kPlan : Task::kWhole, j, {}});
    }
    control_[d.database] = Pair{std::move(d.source), std::move(d.target)};
    return method;
  }

  void Finish(TableVerification v) {
    std::lock_guard<std::mutex> lock(finished_mu_);
    if (options_.on_table) options_.on_table(v);
    finished_.push_back(std::move(v));
  }

  bool Stopped() {
    if (options_.stop && options_.stop()) Fail(Status::Aborted("verification stopped"));
    std::lock_guard<std::mutex> lock(queue_mu_);
    return !error_.ok();
  }

  void Fail(const Status& s) {
    std::lock_guard<std::mutex> lock(queue_mu_);
    if (error_.ok()) error_ = s;
    queue_cv_.notify_all();
  }

  void Push(Task t) {
    std::lock_guard<std::mutex> lock(queue_mu_);
    queue_.push_back(std::move(t));
    queue_cv_.notify_one();
  }

  // Each worker: its own session per database and side, tasks until none is left anywhere.
  void Work() {
    std::map<std::string, Pair> sessions;
    while (true) {
      Task task;
      {
        std::unique_lock<std::mutex> lock(queue_mu_);
        queue_cv_.wait(lock, [&] { return !error_.ok() || !queue_.empty() || busy_ == 0; });
        if (!error_.ok() || queue_.empty()) return;
        task = std::move(queue_.front());
        queue_.pop_front();
        ++busy_;
      }
      Status s = RunTask(task, sessions);
      if (!s.ok())
        Fail(s.WithContext("verifying " + task.table->db + "." + task.table->name.first + "." +
                           task.table->name.second));
      std::lock_guard<std::mutex> lock(queue_mu_);
      --busy_;
      queue_cv_.notify_all();
    }
  }

  Result<Pair*> SessionsFor(const std::string& db, std::map<std::string, Pair>& sessions) {
    auto it = sessions.find(db);
    if (it != sessions.end()) return &it->second;
    Pair p;
    PGSHIFT_ASSIGN_OR_RETURN(p.source, OpenSession(source_dsn_, db, "source"));
    PGSHIFT_ASSIGN_OR_RETURN(p.target, OpenSession(target_dsn_, db, "target"));
    const auto& [src_snap, tgt_snap] = snapshots_[db];
    if (!src_snap.empty()) {
      // Every worker reads exactly what the switch point's snapshots saw.
      for (auto [conn, snap, side] : {std::tuple{p.source.get(), src_snap, "source"},
                                      std::tuple{p.target.get(), tgt_snap, "target"}}) {
        Status s = conn->Exec(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; "
            "SET TRANSACTION SNAPSHOT " +
            conn->QuoteLiteral(snap));
        if (!s.ok()) {
          return s.WithContext(std::string(side) + " database \"" + db +
                               "\": importing the switch point's snapshot");
        }
      }
    }
    return &sessions.emplace(db, std::move(p)).first->second;
  }

  Status RunTask(Task& task, std::map<std::string, Pair>& sessions) {
    if (Stopped()) return Status::Ok();
    TableJob& t = *task.table;
    PGSHIFT_ASSIGN_OR_RETURN(Pair * p, SessionsFor(t.db, sessions));
    {
      std::lock_guard<std::mutex> lock(t.mu);
      if (t.started_us == 0) t.started_us = MonotonicMicros();
    }
    switch (task.kind) {
      case Task::kPlan: PGSHIFT_RETURN_IF_ERROR(Plan(t, *p)); break;
      case Task::kRange: PGSHIFT_RETURN_IF_ERROR(CompareRange(t, *p, task.range)); break;
      case Task::kWhole: PGSHIFT_RETURN_IF_ERROR(CompareWhole(t, *p)); break;
    }
    bool last;
    {
      std::lock_guard<std::mutex> lock(t.mu);
      last = --t.pending == 0;
    }
    if (last && task.kind != Task::kWhole) PGSHIFT_RETURN_IF_ERROR(FinishKeyed(t, *p));
    return Status::Ok();
  }

  // Both sides at once. Errors name the side.
  Result<std::pair<QueryResult, QueryResult>> Both(Pair& p, const Sql& q) {
    Status ss = p.source->Send(q.text, q.params);
    Status ts = p.target->Send(q.text, q.params);
    Result<QueryResult> sr = ss.ok() ? p.source->Receive() : Result<QueryResult>(ss);
    Result<QueryResult> tr = ts.ok() ? p.target->Receive() : Result<QueryResult>(ts);
    if (!sr.ok()) return sr.status().WithContext("source");
    if (!tr.ok()) return tr.status().WithContext("target");
    return std::make_pair(std::move(*sr), std::move(*tr));
  }
  Result<QueryResult> One(Connection& c, const char* side, const Sql& q) {
    auto r = c.Query(q.text, q.params);
    if (!r.ok()) return r.status().WithContext(side);
    return r;
  }
  Status Settle(const std::string& db) {
    if (!options_.settle) return Status::Ok();
    SpentTimer timer(spent_[kSettling]);
    return options_.settle(db).WithContext("waiting for replication");
  }

  // Cut points from a page sample of the source: ranges of about chunk_rows rows.
  Status Plan(TableJob& t, Pair& p) {
    SpentTimer timer(spent_[kPlanning]);
    std::vector<KeyRange> ranges{KeyRange{}};
    const int64_t chunk = std::max<int64_t>(1, options_.chunk_rows);
    const int64_t parts = (t.estimated_rows + chunk - 1) / chunk;
    if (parts > 1) {
      // About 32 sampled keys per range; SYSTEM sampling reads whole pages, a few hundred.
      double percent = std::min(100.0, 100.0 * static_cast<double>(parts) * 32.0 /
                                            static_cast<double>(std::max<int64_t>(t.estimated_rows, 1)));
      std::vector<KeyValues> sample;
      // A small percentage of a table of a few thousand pages can round to no page at all
      // (or a stale estimate can be far off): sample more until every range has keys to cut at.
      while (true) {
        PGSHIFT_ASSIGN_OR_RETURN(QueryResult r,
                                 One(*p.source, "source", t.queries->SampleKeys(percent)));
        sample.clear();
        for (int i = 0; i < r.rows(); ++i) {
          KeyValues k;
          for (int c = 0; c < r.columns(); ++c) k.push_back(r.Get(i, c));
          sample.push_back(std::move(k));
        }
        if (static_cast<int64_t>(sample.size()) >= parts * 8 || percent >= 100.0) break;
        percent = std::min(100.0, percent * 8);
      }
      ranges = SplitRange(KeyRange{}, PickCutPoints(sample, parts));
    }
    std::lock_guard<std::mutex> lock(t.mu);
    t.pending += static_cast<int64_t>(ranges.size());
    for (KeyRange& r : ranges) Push({Task::kRange, &t, std::move(r)});
    return Status::Ok();
  }

  // First pass over one range, both sides at once; a difference is narrowed down.
  Status CompareRange(TableJob& t, Pair& p, const KeyRange& range) {
    std::optional<SpentTimer> first(spent_[kFirstPass]);
    PGSHIFT_ASSIGN_OR_RETURN(auto r, Both(p, t.queries->Aggregate(range)));
    first.reset();
    Agg s = ToAgg(r.first), g = ToAgg(r.second);
    {
      std::lock_guard<std::mutex> lock(t.mu);
      t.source_rows += s.rows;
      t.target_rows += g.rows;
      t.source_sum.Add(s.sum);
      t.target_sum.Add(g.sum);
      ++t.result.ranges;
    }
    if (s == g) return Status::Ok();
    SpentTimer timer(spent_[kNarrowing]);
    return Narrow(t, p, range, s, g, 0);
  }

  // A range differs: cut it into kFanout parts at keys of the side with more rows, compare
  // the parts, and go on with those that still differ, down to leaf_rows.
  Status Narrow(TableJob& t, Pair& p, const KeyRange& range, const Agg& s, const Agg& g,
                int depth) {
    if (Stopped()) return Status::Ok();
    const int64_t n = std::max(s.rows, g.rows);
    if (n <= options_.leaf_rows || depth >= kMaxDepth) return Leaf(t, p, range);
    const bool from_source = s.rows >= g.rows;
    const int64_t step = (n + kFanout - 1) / kFanout;
    PGSHIFT_ASSIGN_OR_RETURN(QueryResult cuts, One(from_source ? *p.source : *p.target,
                                                   from_source ? "source" : "target",
                                                   t.queries->CutPoints(range, step)));
    std::vector<KeyValues> points;
    for (int i = 0; i < cuts.rows(); ++i) {
      KeyValues k;
      for (int c = 0; c < cuts.columns(); ++c) k.push_back(cuts.Get(i, c));
      points.push_back(std::move(k));
    }
    if (points.empty()) return Leaf(t, p, range);
    std::vector<KeyRange> parts = SplitRange(range, points);
    std::vector<Agg> src(parts.size()), tgt(parts.size());
    if (live()) {
      // Source first, then the target once it applied all that: a part still differing
      // then differs for a reason (or was written in between).
      for (size_t i = 0; i < parts.size(); ++i) {
        PGSHIFT_ASSIGN_OR_RETURN(QueryResult r,
                                 One(*p.source, "source", t.queries->Aggregate(parts[i])));
        src[i] = ToAgg(r);
      }
      PGSHIFT_RETURN_IF_ERROR(Settle(t.db));
      for (size_t i = 0; i < parts.size(); ++i) {
        PGSHIFT_ASSIGN_OR_RETURN(QueryResult r,
                                 One(*p.target, "target", t.queries->Aggregate(parts[i])));
        tgt[i] = ToAgg(r);
      }
    } else {
      for (size_t i = 0; i < parts.size(); ++i) {
        PGSHIFT_ASSIGN_OR_RETURN(auto r, Both(p, t.queries->Aggregate(parts[i])));
        src[i] = ToAgg(r.first);
        tgt[i] = ToAgg(r.second);
      }
    }
    {
      std::lock_guard<std::mutex> lock(t.mu);
      t.result.ranges += static_cast<int64_t>(parts.size());
    }
    for (size_t i = 0; i < parts.size(); ++i) {
      if (!(src[i] == tgt[i]))
        PGSHIFT_RETURN_IF_ERROR(Narrow(t, p, parts[i], src[i], tgt[i], depth + 1));
    }
    return Status::Ok();
  }

  // A small differing range: its rows on both sides; the keys that differ are candidates,
  // decided by key in FinishKeyed.
  Status Leaf(TableJob& t, Pair& p, const KeyRange& range) {
    Sql q = t.queries->RangeRows(range);
    std::map<KeyValues, RowObservation> src, tgt;
    if (live()) {
      PGSHIFT_ASSIGN_OR_RETURN(QueryResult s, One(*p.source, "source", q));
      src = ToRows(s, t.shape.key.size());
      PGSHIFT_RETURN_IF_ERROR(Settle(t.db));
      PGSHIFT_ASSIGN_OR_RETURN(QueryResult g, One(*p.target, "target", q));
      tgt = ToRows(g, t.shape.key.size());
    } else {
      PGSHIFT_ASSIGN_OR_RETURN(auto r, Both(p, q));
      src = ToRows(r.first, t.shape.key.size());
      tgt = ToRows(r.second, t.shape.key.size());
    }
    std::vector<const KeyValues*> differ;
    for (const auto& [k, o] : src) {
      auto it = tgt.find(k);
      if (it == tgt.end() || it->second.hash != o.hash) differ.push_back(&k);
    }
    for (const auto& [k, o] : tgt) {
      if (!src.count(k)) differ.push_back(&k);
    }
    std::lock_guard<std::mutex> lock(t.mu);
    for (const KeyValues* k : differ) {
      if (t.candidates.count(*k)) continue;
      if (t.candidates.size() < static_cast<size_t>(kMaxTrackedKeys)) {
        t.candidates.insert(*k);
      } else {
        ++t.untracked;
      }
    }
    return Status::Ok();
  }

  Result<std::map<KeyValues, RowObservation>> ByKey(Connection& c, const char* side, TableJob& t,
                                                    const std::vector<KeyValues>& keys) {
    PGSHIFT_ASSIGN_OR_RETURN(QueryResult r, One(c, side, t.queries->RowsByKey(keys)));
    return ToRows(r, t.shape.key.size());
  }

  // Every range of a keyed table is done: decide its candidate keys, by key (equality
  // lookups: a row a range read missed because the two servers order the key differently is
  // found here).
  Status FinishKeyed(TableJob& t, Pair& p) {
    SpentTimer timer(spent_[kByKey]);
    std::vector<KeyValues> active(t.candidates.begin(), t.candidates.end());
    std::vector<KeyValues> differing, changing;
    TableVerification& v = t.result;
    if (!active.empty() && !live()) {
      ++v.rounds;
      PGSHIFT_ASSIGN_OR_RETURN(auto r, Both(p, t.queries->RowsByKey(active)));
      auto src = ToRows(r.first, t.shape.key.size()), tgt = ToRows(r.second, t.shape.key.size());
      for (const KeyValues& k : active) {
        auto a = src.find(k), b = tgt.find(k);
        bool same = (a == src.end()) == (b == tgt.end()) &&
                    (a == src.end() || a->second.hash == b->second.hash);
        if (!same) differing.push_back(k);
      }
    } else if (!active.empty()) {
      std::map<KeyValues, std::pair<std::vector<RowObservation>, std::vector<RowObservation>>> obs;
      auto record = [&](const std::map<KeyValues, RowObservation>& rows, bool source) {
        for (const KeyValues& k : active) {
          auto it = rows.find(k);
          auto& list = source ? obs[k].first : obs[k].second;
          list.push_back(it == rows.end() ? RowObservation{} : it->second);
        }
      };
      PGSHIFT_ASSIGN_OR_RETURN(auto s0, ByKey(*p.source, "source", t, active));
      record(s0, true);
      for (int round = 0; round < std::max(1, options_.max_rounds) && !active.empty(); ++round) {
        if (Stopped()) return Status::Ok();
        ++v.rounds;
        PGSHIFT_RETURN_IF_ERROR(Settle(t.db));
        PGSHIFT_ASSIGN_OR_RETURN(auto tr, ByKey(*p.target, "target", t, active));
        record(tr, false);
        PGSHIFT_ASSIGN_OR_RETURN(auto sr, ByKey(*p.source, "source", t, active));
        record(sr, true);
        std::vector<KeyValues> still;
        for (const KeyValues& k : active) {
          switch (ClassifyRow(obs[k].first, obs[k].second)) {
            case RowVerdict::kMatch: break;
            case RowVerdict::kDifferent: differing.push_back(k); break;
            case RowVerdict::kChanging: still.push_back(k); break;
          }
        }
        active = std::move(still);
      }
      changing = std::move(active);
    }
    auto shown = [&](std::vector<KeyValues>& keys) {
      std::vector<std::string> text;
      for (const KeyValues& k : keys) text.push_back(KeyText(t.shape, k));
      std::sort(text.begin(), text.end(), NaturalLess);
      if (text.size() > static_cast<size_t>(kMaxShownKeys)) text.resize(kMaxShownKeys);
      return text;
    };
    v.differing_keys = shown(differing);
    v.changing_keys = shown(changing);
    v.differing_rows = static_cast<int64_t>(differing.size());
    v.changing_rows = static_cast<int64_t>(changing.size());
    std::vector<std::string> notes;
    if (t.untracked > 0) {
      // Live: rows beyond what is followed were seen differing once, while being written.
      // At the switch point nothing moves: they differ.
      (live() ? v.changing_rows : v.differing_rows) += t.untracked;
      notes.push_back(std::to_string(t.untracked) +
                      " more differing rows were not followed (at most " +
                      std::to_string(kMaxTrackedKeys) + " per table)");
    }
    FillTotals(t);
    if (v.differing_rows > 0) {
      v.result = TableResult::kDifferent;
      notes.insert(notes.begin(), std::to_string(v.differing_rows) + " row" +
                                      (v.differing_rows == 1 ? "" : "s") + " differ");
    } else if (v.changing_rows > 0) {
      v.result = TableResult::kChanging;
      notes.insert(
          notes.begin(),
          std::to_string(v.changing_rows) + " row" + (v.changing_rows == 1 ? " was" : "s were") +
              " still being written" +
              (options_.exact_check_follows ? " (compared exactly at the switch point)" : ""));
    } else {
      v.result = TableResult::kMatch;
      if (v.source_rows != v.target_rows || v.source_checksum != v.target_checksum) {
        // The totals are the first pass's, read while the table was changing.
        notes.push_back("matched range by range (the table was being written)");
      }
    }
    v.note = Join(notes, "; ");
    v.seconds = static_cast<double>(MonotonicMicros() - t.started_us) / 1e6;
    Finish(std::move(v));
    return Status::Ok();
  }

  void FillTotals(TableJob& t) {
    TableVerification& v = t.result;
    v.source_rows = t.source_rows;
    v.target_rows = t.target_rows;
    if (hashes()) {
      v.source_checksum = t.source_sum.ToString();
      v.target_checksum = t.target_sum.ToString();
    }
  }

  // A table without a key, as a whole: count and sum of row hashes.
  Status CompareWhole(TableJob& t, Pair& p) {
    SpentTimer timer(spent_[kWholeTables]);
    TableVerification& v = t.result;
    Sql q = t.queries->Aggregate(KeyRange{});
    PGSHIFT_ASSIGN_OR_RETURN(auto r, Both(p, q));
    Agg s = ToAgg(r.first), g = ToAgg(r.second);
    v.rounds = 1;
    v.ranges = 1;
    t.source_rows = s.rows;
    t.target_rows = g.rows;
    t.source_sum.Add(s.sum);
    t.target_sum.Add(g.sum);
    if (s == g) {
      v.result = TableResult::kMatch;
    } else if (live()) {
      // Source, settle, target, source: equal to either source read means replication
      // delivered it. A table without a key never blocks here (its rows cannot be followed);
      // the switch point compares it exactly.
      bool matched = false, stood_still = true;
      for (int round = 0; round < std::max(1, options_.max_rounds) && !matched; ++round) {
        if (Stopped()) return Status::Ok();
        ++v.rounds;
        PGSHIFT_ASSIGN_OR_RETURN(QueryResult s0, One(*p.source, "source", q));
        PGSHIFT_RETURN_IF_ERROR(Settle(t.db));
        PGSHIFT_ASSIGN_OR_RETURN(QueryResult g0, One(*p.target, "target", q));
        PGSHIFT_ASSIGN_OR_RETURN(QueryResult s1, One(*p.source, "source", q));
        matched = ToAgg(g0) == ToAgg(s0) || ToAgg(g0) == ToAgg(s1);
        stood_still = stood_still && ToAgg(s0) == ToAgg(s1);
      }
      if (matched) {
        v.result = TableResult::kMatch;
        v.note = "matched after replication caught up (the table was being written)";
      } else if (!stood_still) {
        v.result = TableResult::kChanging;
        v.note = std::string("no key and still being written: its rows cannot be followed") +
                 (options_.exact_check_follows ? "; compared exactly at the switch point"
                                               : "; compare again when writes stop");
      } else if (options_.exact_check_follows) {
        // Flagged early, decided exactly at the switch point.
        v.result = TableResult::kChanging;
        v.note =
            "no key; differs although the source did not change between reads (likely a "
            "real difference): compared exactly at the switch point";
      } else {
        v.result = TableResult::kDifferent;
        v.note = s.rows != g.rows ? "row count differs" : "row contents differ";
        v.note += " (no key: differing rows not located)";
      }
    } else {
      v.result = TableResult::kDifferent;
      v.note = s.rows != g.rows ? "row count differs" : "row contents differ";
      if (hashes()) PGSHIFT_RETURN_IF_ERROR(LocateRows(t, p));
    }
    FillTotals(t);
    v.seconds = static_cast<double>(MonotonicMicros() - t.started_us) / 1e6;
    Finish(std::move(v));
    return Status::Ok();
  }

  // Switch point, a table without a key differs: the rows that differ, by buckets of the row
  // hash (a table without a key has no index to serve anything better), then the hashes in
  // the first differing buckets, then a few of those rows as text.
  Status LocateRows(TableJob& t, Pair& p) {
    TableVerification& v = t.result;
    int64_t buckets = 64;
    while (buckets < 65536 && buckets * 256 < std::max(t.source_rows, t.target_rows)) buckets *= 2;
    ++v.rounds;
    PGSHIFT_ASSIGN_OR_RETURN(auto b, Both(p, t.queries->HashBuckets(buckets)));
    std::map<int64_t, std::pair<std::string, std::string>> src, tgt;
    for (int i = 0; i < b.first.rows(); ++i)
      src[ToInt(b.first.Get(i, 0))] = {b.first.Get(i, 1), b.first.Get(i, 2)};
    for (int i = 0; i < b.second.rows(); ++i)
      tgt[ToInt(b.second.Get(i, 0))] = {b.second.Get(i, 1), b.second.Get(i, 2)};
    std::set<int64_t> differ;
    for (const auto& [k, a] : src) {
      auto it = tgt.find(k);
      if (it == tgt.end() || it->second != a) differ.insert(k);
    }
    for (const auto& [k, a] : tgt) {
      if (!src.count(k)) differ.insert(k);
    }
    std::vector<int64_t> which(differ.begin(), differ.end());
    const bool all = which.size() <= static_cast<size_t>(kMaxBucketsNarrowed);
    if (!all) which.resize(kMaxBucketsNarrowed);
    if (which.empty()) return Status::Ok();
    ++v.rounds;
    PGSHIFT_ASSIGN_OR_RETURN(auto h, Both(p, t.queries->HashesInBuckets(buckets, which)));
    std::map<std::string, int64_t> count;  // hash -> source count minus target count
    for (int i = 0; i < h.first.rows(); ++i) count[h.first.Get(i, 0)] += ToInt(h.first.Get(i, 1));
    for (int i = 0; i < h.second.rows(); ++i)
      count[h.second.Get(i, 0)] -= ToInt(h.second.Get(i, 1));
    std::vector<std::string> only_src, only_tgt;
    int64_t rows = 0;
    for (const auto& [hash, n] : count) {
      rows += std::llabs(n);
      if (n > 0 && only_src.size() < static_cast<size_t>(kMaxShownKeys)) only_src.push_back(hash);
      if (n < 0 && only_tgt.size() < static_cast<size_t>(kMaxShownKeys)) only_tgt.push_back(hash);
    }
    v.differing_rows = rows;
    v.note += "; " + std::string(all ? "" : "at least ") + std::to_string(rows) + " row" +
              (rows == 1 ? "" : "s") + " differ";
    for (auto [conn, list, sign] : {std::tuple{p.source.get(), &only_src, "+ only on source: "},
                                    std::tuple{p.target.get(), &only_tgt, "- only on target: "}}) {
      if (list->empty()) continue;
      ++v.rounds;
      PGSHIFT_ASSIGN_OR_RETURN(QueryResult r,
                               One(*conn, conn == p.source.get() ? "source" : "target",
                                   t.queries->RowTexts(*list, kMaxShownKeys)));
      // Rows with the same hash are the same row: one line each, with how many copies.
      std::set<std::string> seen;
      for (int i = 0; i < r.rows(); ++i) {
        const std::string hash = r.Get(i, 0);
        if (!seen.insert(hash).second) continue;
        const int64_t copies = std::llabs(count[hash]);
        v.differing_rows_text.push_back(
            sign + r.Get(i, 1) + (copies > 1 ? " (" + std::to_string(copies) + " copies)" : ""));
      }
    }
    return Status::Ok();
  }

  const VerifyMode mode_;
  const std::string source_dsn_, target_dsn_;
  const VerifyOptions& options_;
  std::map<std::string, std::pair<std::string, std::string>> snapshots_;  // db -> (src, tgt)
  std::map<std::string, Pair> control_;  // the catalog sessions, kept until the end
  std::vector<std::unique_ptr<TableJob>> tables_;
  std::array<std::atomic<int64_t>, kSpentKinds> spent_{};

  std::mutex queue_mu_;  // guards queue_, busy_, error_
  std::condition_variable queue_cv_;
  std::deque<Task> queue_;
  int busy_ = 0;
  Status error_;

  std::mutex finished_mu_;
  std::vector<TableVerification> finished_;
};

}  // namespace

Result<std::unique_ptr<Connection>> OpenSession(const std::string& dsn, const std::string& db,
                                                const char* side) {
  auto fail = [&](const Status& s) {
    return s.WithContext(std::string(side) + " database \"" + db + "\"");
  };
  auto db_dsn = pg::DsnForDatabase(dsn, db);
  if (!db_dsn.ok()) return fail(db_dsn.status());
  auto conn = Connection::Connect(*db_dsn, 10, "pgshift");
  if (!conn.ok()) return fail(conn.status());
  Status s = (*conn)->Exec(kSessionSetup);
  if (!s.ok()) return fail(s.WithContext("preparing session"));
  return std::move(*conn);
}

Result<VerifyReport> Compare(VerifyMode mode, const std::string& source_dsn,
                             const std::string& target_dsn, std::vector<DatabaseSessions> dbs,
                             const VerifyOptions& options) {
  Comparison c(mode, source_dsn, target_dsn, options);
  return c.Run(std::move(dbs));
}

}  // namespace verify

Status CoalescingSettle::operator()() {
  std::unique_lock<std::mutex> lock(mu_);
  const int64_t need = started_ + 1;  // a run that starts after this call began
  while (finished_ < need) {
    if (running_) {
      cv_.wait(lock);
      continue;
    }
    running_ = true;
    const int64_t mine = ++started_;
    lock.unlock();
    Status s = run_();
    lock.lock();
    running_ = false;
    finished_ = mine;
    last_ = s;
    cv_.notify_all();
  }
  return last_;
}

Result<VerifyLevel> ParseVerifyLevel(const std::string& text) {
  std::string t = ToLower(Trim(text));
  if (t == "none") return VerifyLevel::kNone;
  if (t == "count") return VerifyLevel::kCount;
  if (t == "checksum") return VerifyLevel::kChecksum;
  return Status::InvalidArgument("unknown verify level \"" + text +
                                 "\" (want none, count or checksum)");
}

std::string VerifyLevelName(VerifyLevel level) {
  switch (level) {
    case VerifyLevel::kNone: return "none";
    case VerifyLevel::kCount: return "count";
    case VerifyLevel::kChecksum: return "checksum";
  }
  return "unknown";
}

std::string VerifyModeName(VerifyMode mode) {
  return mode == VerifyMode::kConvergence ? "pre-cutover convergence" : "exact snapshot pair";
}

std::string TableResultName(TableResult r) {
  switch (r) {
    case TableResult::kMatch: return "match";
    case TableResult::kChanging: return "changing";
    case TableResult::kDifferent: return "different";
    case TableResult::kSkipped: return "skipped";
  }
  return "unknown";
}

int64_t VerifyReport::mismatches() const { return Count(TableResult::kDifferent); }

int64_t VerifyReport::Count(TableResult r) const {
  return std::count_if(tables.begin(), tables.end(),
                       [r](const TableVerification& t) { return t.result == r; });
}

namespace {

std::string Cell(int64_t n) { return n < 0 ? "-" : std::to_string(n); }

std::string KeysNote(const std::vector<std::string>& keys, size_t shown, int64_t total) {
  std::vector<std::string> k(keys.begin(), keys.begin() + std::min(shown, keys.size()));
  return Join(k, ", ") + (total > static_cast<int64_t>(k.size()) ? ", ..." : "");
}

}  // namespace

std::string VerifyReport::Render() const {
  constexpr size_t kKeysShown = 5;
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"DATABASE", "TABLE", "KEY", "SOURCE ROWS", "TARGET ROWS", "RESULT", "NOTE"});
  for (const TableVerification& t : tables) {
    std::string note = t.note;
    auto add = [&note](const std::string& s) { note += (note.empty() ? "" : "; ") + s; };
    if (!t.differing_keys.empty())
      add("keys: " + KeysNote(t.differing_keys, kKeysShown, t.differing_rows));
    if (!t.changing_keys.empty()) {
      add("being written: " + KeysNote(t.changing_keys, kKeysShown, t.changing_rows));
    }
    for (size_t i = 0; i < t.differing_rows_text.size() && i < kKeysShown; ++i) {
      add(t.differing_rows_text[i]);
    }
    std::string result =
        t.result == TableResult::kDifferent ? "DIFFERENT" : TableResultName(t.result);
    rows.push_back({t.database, t.schema + "." + t.table, t.key.empty() ? "-" : t.key,
                    Cell(t.source_rows), Cell(t.target_rows), result, note});
  }
  std::vector<size_t> width(rows[0].size(), 0);
  for (const auto& r : rows) {
    for (size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  }
  std::string out;
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      bool right = i == 3 || i == 4;  // numbers
      std::string pad(width[i] - r[i].size(), ' ');
      if (i) line += "  ";
      line += right ? pad + r[i] : (i + 1 == r.size() ? r[i] : r[i] + pad);
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  }
  out += Summary() + "\n";
  return out;
}

std::string VerifyReport::Summary() const {
  const int64_t n = compared();
  std::string how = VerifyLevelName(level) + ", " + VerifyModeName(mode);
  if (!hash.empty() && level == VerifyLevel::kChecksum) how += ", " + hash;
  std::string out =
      std::to_string(n) + " table" + (n == 1 ? "" : "s") + " compared (" + how + "): ";
  const int64_t same = Count(TableResult::kMatch), changing = Count(TableResult::kChanging),
                bad = mismatches();
  if (same == n) {
    out += "all match";
  } else {
    std::vector<std::string> parts;
    parts.push_back(std::to_string(same) + " match");
    if (changing > 0)
      parts.push_back(std::to_string(changing) + " still being written (not blocking)");
    if (bad > 0) parts.push_back(std::to_string(bad) + " different");
    out += Join(parts, ", ");
  }
  if (int64_t skipped = Count(TableResult::kSkipped); skipped > 0) {
    out += "; " + std::to_string(skipped) + " skipped";
  }
  return out;
}

nlohmann::json VerifyReport::ToJson() const {
  auto count = [](int64_t n) { return n < 0 ? nlohmann::json(nullptr) : nlohmann::json(n); };
  nlohmann::json list = nlohmann::json::array();
  for (const TableVerification& t : tables) {
    list.push_back({{"database", t.database},
                    {"schema", t.schema},
                    {"table", t.table},
                    {"key", t.key},
                    {"result", TableResultName(t.result)},
                    {"match", t.match()},
                    {"blocking", t.blocking()},
                    {"source_rows", count(t.source_rows)},
                    {"target_rows", count(t.target_rows)},
                    {"source_checksum", t.source_checksum},
                    {"target_checksum", t.target_checksum},
                    {"differing_keys", t.differing_keys},
                    {"differing_rows", t.differing_rows},
                    {"differing_rows_text", t.differing_rows_text},
                    {"changing_keys", t.changing_keys},
                    {"changing_rows", t.changing_rows},
                    {"ranges", t.ranges},
                    {"rounds", t.rounds},
                    {"note", t.note},
                    {"seconds", t.seconds}});
  }
  nlohmann::json spent = nlohmann::json::object();
  for (const auto& [what, secs] : worker_seconds) spent[what] = secs;
  return {{"level", VerifyLevelName(level)},
          {"mode", mode == VerifyMode::kConvergence ? "convergence" : "snapshot"},
          {"how", VerifyModeName(mode)},
          {"hash", hash},
          {"jobs", jobs},
          {"seconds", seconds},
          {"clean", clean()},
          {"tables_verified", compared()},
          {"matching", Count(TableResult::kMatch)},
          {"changing", Count(TableResult::kChanging)},
          {"mismatches", mismatches()},
          {"skipped", Count(TableResult::kSkipped)},
          {"summary", Summary()},
          {"worker_seconds", spent},
          {"tables", std::move(list)}};
}

Result<VerifyReport> VerifyDatabases(const std::string& source_dsn, const std::string& target_dsn,
                                     const VerifyOptions& options) {
  if (options.databases.empty()) {
    return Status::InvalidArgument("verify: no database given");
  }
  if (options.level == VerifyLevel::kNone) {
    VerifyReport report;
    report.level = options.level;
    return report;
  }
  std::vector<verify::DatabaseSessions> dbs;
  for (const std::string& db : options.databases) {
    verify::DatabaseSessions d;
    d.database = db;
    PGSHIFT_ASSIGN_OR_RETURN(d.source, verify::OpenSession(source_dsn, db, "source"));
    PGSHIFT_ASSIGN_OR_RETURN(d.target, verify::OpenSession(target_dsn, db, "target"));
    dbs.push_back(std::move(d));
  }
  return verify::Compare(VerifyMode::kConvergence, source_dsn, target_dsn, std::move(dbs), options);
}

}  // namespace pgshift::engine
