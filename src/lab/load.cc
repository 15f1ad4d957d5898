#include "lab/load.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "common/clock.h"
#include "common/files.h"
#include "common/log.h"
#include "common/strings.h"
#include "pg/connection.h"

namespace pgshift::lab {

namespace {

constexpr const char* kSetupSql =
    "CREATE SCHEMA IF NOT EXISTS pgshift_load;"
    "CREATE TABLE IF NOT EXISTS pgshift_load.items ("
    "  id bigint PRIMARY KEY,"
    "  version bigint NOT NULL,"
    "  payload text NOT NULL,"
    "  updated_at timestamptz NOT NULL DEFAULT now())";

// An operation slower than LoadOptions::slow_ms, for the trace beside the ledger.
struct SlowOp {
  int64_t scheduled_us, done_us;
  int client;
  const char* op;
  bool ok;
};

struct SecondBucket {
  int64_t ops = 0, writes = 0, reads = 0, errors = 0;
  double max_latency_ms = 0;
};

// Shared by the client threads; every member is guarded by mu.
struct Shared {
  std::mutex mu;
  FILE* ledger = nullptr;
  std::vector<SecondBucket> seconds;
  LoadSummary totals;
  std::vector<float> latencies_ms;
  std::vector<SlowOp> slow;
  double slow_ms = 0;
  int64_t start_us = 0;

  void Record(int64_t now_us, double latency_ms, bool ok, bool is_write, const SlowOp& op) {
    std::lock_guard<std::mutex> lock(mu);
    if (slow_ms > 0 && latency_ms >= slow_ms) slow.push_back(op);
    size_t sec = static_cast<size_t>(std::max<int64_t>(0, now_us - start_us) / 1000000);
    if (seconds.size() <= sec) seconds.resize(sec + 1);
    SecondBucket& b = seconds[sec];
    b.ops++;
    if (!ok) b.errors++;
    else if (is_write) b.writes++;
    else b.reads++;
    b.max_latency_ms = std::max(b.max_latency_ms, latency_ms);
    latencies_ms.push_back(static_cast<float>(latency_ms));
    if (!ok) totals.errors++;
    else if (is_write) totals.acknowledged++;
    else totals.reads++;
  }
  void Ledger(const std::string& line) {
    std::lock_guard<std::mutex> lock(mu);
    fputs(line.c_str(), ledger);
  }
};

uint64_t Mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

// SIGINT/SIGTERM end a run early, as if its duration had passed: operations in flight finish,
// the ledger, series and summary are written. Tests stop the load once the story they drive
// is over.
std::atomic<bool> g_stop_requested{false};
extern "C" void OnStopSignal(int) { g_stop_requested.store(true); }

class Client {
 public:
  Client(const LoadOptions& opts, Shared* shared, int index, int64_t run_id)
      : opts_(opts), shared_(shared), index_(index),
        key_base_((run_id << 40) | (static_cast<int64_t>(index) << 32)),
        rng_(static_cast<uint32_t>(Mix(static_cast<uint64_t>(run_id) * 131 + index))) {}

  void Run(int64_t start_us, int64_t end_us) {
    double interval_us = 1e6 * opts_.clients / opts_.rate;
    // Stagger the clients so their operations interleave evenly.
    double offset = interval_us * index_ / opts_.clients;
    for (int64_t i = 0;; ++i) {
      int64_t scheduled = start_us + static_cast<int64_t>(offset + i * interval_us);
      if (scheduled >= end_us || g_stop_requested.load()) break;
      int64_t now = MonotonicMicros();
      if (scheduled > now) {
        std::this_thread::sleep_for(std::chrono::microseconds(scheduled - now));
      }
      Step(scheduled);
    }
  }

  int64_t reconnects() const { return reconnects_; }
  int64_t uncertain() const { return uncertain_; }
  int64_t stale_reads() const { return stale_reads_; }

 private:
  enum class Op { kInsert, kUpdate, kDelete, kRead };

  void Step(int64_t scheduled_us) {
    Op op = Choose();
    bool is_write = op != Op::kRead;
    if (!conn_ || conn_->broken()) {
      conn_.reset();
      auto c = pg::Connection::Connect(opts_.dsn, 2, "pgshift-load");
      if (!c.ok()) {
        Finish(scheduled_us, false, is_write);
        if (errors_logged_++ < 3) LogWarn("load client cannot connect: " + c.status().message());
        return;
      }
      conn_ = std::move(*c);
      if (connected_once_) reconnects_++;
      connected_once_ = true;
    }
    bool ok = false;
    switch (op) {
      case Op::kInsert: ok = Insert(); break;
      case Op::kUpdate: ok = Update(); break;
      case Op::kDelete: ok = Delete(); break;
      case Op::kRead: ok = Read(); break;
    }
    Finish(scheduled_us, ok, is_write, kOpNames[static_cast<int>(op)]);
  }

  static constexpr const char* kOpNames[] = {"insert", "update", "delete", "read"};

  void Finish(int64_t scheduled_us, bool ok, bool is_write, const char* op = "connect") {
    int64_t now = MonotonicMicros();
    shared_->Record(now, (now - scheduled_us) / 1000.0, ok, is_write,
                    SlowOp{scheduled_us, now, index_, op, ok});
  }

  Op Choose() {
    if (live_.empty()) return Op::kInsert;
    int r = static_cast<int>(rng_() % 100);
    if (r < opts_.read_percent) return Op::kRead;
    int w = static_cast<int>(rng_() % 100);
    // Inserts slightly outnumber deletes, so the key set grows slowly.
    if (w < 35 || live_.size() < 8) return Op::kInsert;
    if (w < 85) return Op::kUpdate;
    return Op::kDelete;
  }

  size_t PickLive() { return static_cast<size_t>(rng_() % live_.size()); }

  // After a failed write: an error the server reported means the statement did not commit; a
  // broken connection means we cannot know.
  bool Uncertain() const { return conn_->broken() || conn_->last_sqlstate().empty(); }

  void MarkUncertain(int64_t key, int64_t before, int64_t after) {
    uncertain_++;
    shared_->Ledger("? " + std::to_string(key) + " " + std::to_string(before) + " " +
                    std::to_string(after) + "\n");
  }

  void LogError(const Status& s) {
    if (errors_logged_++ < 3) LogWarn("load client: " + s.message());
  }

  bool Insert() {
    int64_t key = key_base_ + next_seq_++;
    auto r = conn_->Query("INSERT INTO pgshift_load.items (id, version, payload) VALUES ($1, 1, $2)",
                          {std::to_string(key), LoadPayload(key, 1)});
    if (!r.ok()) {
      LogError(r.status());
      if (Uncertain()) MarkUncertain(key, 0, 1);
      return false;
    }
    shared_->Ledger("I " + std::to_string(key) + " 1\n");
    live_.push_back({key, 1});
    return true;
  }

  bool Update() {
    size_t i = PickLive();
    auto [key, version] = live_[i];
    int64_t next = version + 1;
    auto r = conn_->Query(
        "UPDATE pgshift_load.items SET version = $2, payload = $3, updated_at = now() "
        "WHERE id = $1 AND version = $4",
        {std::to_string(key), std::to_string(next), LoadPayload(key, next), std::to_string(version)});
    if (!r.ok()) {
      LogError(r.status());
      if (Uncertain()) {
        MarkUncertain(key, version, next);
        Retire(i);
      }
      return false;
    }
    if (r->AffectedRows() != 1) {
      // Our row is gone or changed behind our back: verify will name it; stop touching it.
      stale_reads_++;
      Retire(i);
      return true;
    }
    shared_->Ledger("U " + std::to_string(key) + " " + std::to_string(next) + "\n");
    live_[i].second = next;
    return true;
  }

  bool Delete() {
    size_t i = PickLive();
    auto [key, version] = live_[i];
    auto r = conn_->Query("DELETE FROM pgshift_load.items WHERE id = $1", {std::to_string(key)});
    if (!r.ok()) {
      LogError(r.status());
      if (Uncertain()) {
        MarkUncertain(key, version, 0);
        Retire(i);
      }
      return false;
    }
    shared_->Ledger("D " + std::to_string(key) + "\n");
    Retire(i);
    return true;
  }

  bool Read() {
    size_t i = PickLive();
    auto [key, version] = live_[i];
    auto r = conn_->Query("SELECT version, payload FROM pgshift_load.items WHERE id = $1",
                          {std::to_string(key)});
    if (!r.ok()) {
      LogError(r.status());
      return false;
    }
    if (r->rows() != 1 || r->Get(0, 0) != std::to_string(version) ||
        r->Get(0, 1) != LoadPayload(key, version)) {
      stale_reads_++;
    }
    return true;
  }

  void Retire(size_t i) {
    live_[i] = live_.back();
    live_.pop_back();
  }

  const LoadOptions& opts_;
  Shared* shared_;
  int index_;
  int64_t key_base_;
  int64_t next_seq_ = 1;
  std::mt19937 rng_;
  std::unique_ptr<pg::Connection> conn_;
  std::vector<std::pair<int64_t, int64_t>> live_;  // key, acknowledged version
  bool connected_once_ = false;
  int64_t reconnects_ = 0, uncertain_ = 0, stale_reads_ = 0;
  int errors_logged_ = 0;
};

double Percentile(const std::vector<float>& sorted, double p) {
  if (sorted.empty()) return 0;
  size_t idx = static_cast<size_t>(std::ceil(p * sorted.size())) ;
  idx = std::min(sorted.size() - 1, idx == 0 ? 0 : idx - 1);
  return sorted[idx];
}

std::string Fixed(double v, int digits = 2) {
  char buf[64];
  snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

}  // namespace

std::string LoadPayload(int64_t key, int64_t version) {
  uint64_t h = Mix(static_cast<uint64_t>(key) * 0x9e3779b97f4a7c15ULL + static_cast<uint64_t>(version));
  char buf[80];
  snprintf(buf, sizeof buf, "v%lld-%016llx%016llx", static_cast<long long>(version),
           static_cast<unsigned long long>(h), static_cast<unsigned long long>(Mix(h)));
  return buf;
}

std::string LoadSummary::SummaryLine() const {
  return "acknowledged=" + std::to_string(acknowledged) + " errors=" + std::to_string(errors) +
         " max_latency_ms=" + Fixed(max_latency_ms, 1) + " p50_ms=" + Fixed(p50_ms) +
         " p99_ms=" + Fixed(p99_ms) + " p999_ms=" + Fixed(p999_ms);
}

std::string LoadSummary::DetailLine() const {
  return "reads=" + std::to_string(reads) + " uncertain=" + std::to_string(uncertain) +
         " stale_reads=" + std::to_string(stale_reads) + " reconnects=" + std::to_string(reconnects) +
         " achieved_ops_per_s=" + Fixed(achieved_rate, 1) + " elapsed_s=" + Fixed(elapsed_s, 1);
}

Result<LoadSummary> RunLoad(const LoadOptions& opts) {
  if (opts.rate <= 0) return Status::InvalidArgument("--rate must be positive");
  if (opts.duration_s <= 0) return Status::InvalidArgument("--duration must be positive");
  if (opts.clients < 1 || opts.clients > 256) {
    return Status::InvalidArgument("--clients must be between 1 and 256");
  }
  if (opts.read_percent < 0 || opts.read_percent > 100) {
    return Status::InvalidArgument("--reads must be a percentage (0 to 100)");
  }
  if (opts.ledger.empty()) return Status::InvalidArgument("--ledger is required");
  {
    auto conn = pg::Connection::Connect(opts.dsn, 10, "pgshift-load");
    if (!conn.ok()) return conn.status();
    // Only when missing: DDL during a migration blocks its cutover.
    auto exists = (*conn)->QueryValue("SELECT to_regclass('pgshift_load.items') IS NOT NULL");
    if (!exists.ok()) return exists.status();
    if (*exists != "t") {
      PGSHIFT_RETURN_IF_ERROR((*conn)->Exec(kSetupSql).WithContext("creating pgshift_load.items"));
    }
  }
  PGSHIFT_RETURN_IF_ERROR(MakeDirs(DirName(AbsolutePath(opts.ledger))));

  Shared shared;
  shared.ledger = fopen(opts.ledger.c_str(), "a");
  if (shared.ledger == nullptr) {
    return Status::InvalidArgument("cannot open ledger " + opts.ledger + ": " + strerror(errno));
  }
  std::mt19937_64 seed(std::random_device{}());
  int64_t run_id = static_cast<int64_t>(seed() % ((1 << 20) - 1)) + 1;
  fprintf(shared.ledger, "# pgshift-load v1 run=%lld started=%s rate=%.1f clients=%d\n",
          static_cast<long long>(run_id), NowUtc().c_str(), opts.rate, opts.clients);

  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < opts.clients; ++i) {
    clients.push_back(std::make_unique<Client>(opts, &shared, i, run_id));
  }
  struct sigaction sa = {};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  int64_t start = MonotonicMicros() + 50000;
  int64_t end = start + static_cast<int64_t>(opts.duration_s * 1e6);
  shared.start_us = start;
  shared.slow_ms = opts.slow_ms;
  // Monotonic to wall clock, for the slow operations' trace (read beside other processes' logs).
  const int64_t unix_minus_monotonic_us = UnixMillis() * 1000 - MonotonicMicros();
  std::vector<std::thread> threads;
  for (auto& c : clients) threads.emplace_back([&c, start, end]() { c->Run(start, end); });

  // The progress line and the periodic ledger flush share one loop.
  std::atomic<bool> done{false};
  std::thread ticker([&]() {
    while (!done) {
      SleepMillis(250);
      std::lock_guard<std::mutex> lock(shared.mu);
      fflush(shared.ledger);
      if (opts.progress) {
        double elapsed = std::max(0.0, (MonotonicMicros() - start) / 1e6);
        const SecondBucket* last = shared.seconds.size() >= 2 ? &shared.seconds[shared.seconds.size() - 2] : nullptr;
        fprintf(stderr, "\r[%5.1fs/%.0fs] acknowledged=%lld reads=%lld errors=%lld ops/s=%lld max_ms=%.1f   ",
                elapsed, opts.duration_s, static_cast<long long>(shared.totals.acknowledged),
                static_cast<long long>(shared.totals.reads),
                static_cast<long long>(shared.totals.errors),
                static_cast<long long>(last ? last->ops : 0), last ? last->max_latency_ms : 0.0);
      }
    }
  });
  for (auto& t : threads) t.join();
  done = true;
  ticker.join();
  if (opts.progress) fprintf(stderr, "\n");
  int64_t finished = MonotonicMicros();

  fflush(shared.ledger);
  fsync(fileno(shared.ledger));
  fclose(shared.ledger);

  LoadSummary sum = shared.totals;
  for (auto& c : clients) {
    sum.reconnects += c->reconnects();
    sum.uncertain += c->uncertain();
    sum.stale_reads += c->stale_reads();
  }
  std::sort(shared.latencies_ms.begin(), shared.latencies_ms.end());
  sum.max_latency_ms = shared.latencies_ms.empty() ? 0 : shared.latencies_ms.back();
  sum.p50_ms = Percentile(shared.latencies_ms, 0.50);
  sum.p99_ms = Percentile(shared.latencies_ms, 0.99);
  sum.p999_ms = Percentile(shared.latencies_ms, 0.999);
  sum.elapsed_s = (finished - start) / 1e6;
  sum.achieved_rate = sum.elapsed_s > 0 ? (sum.acknowledged + sum.reads) / sum.elapsed_s : 0;

  std::string csv = "second,ops,writes,reads,errors,max_latency_ms\n";
  for (size_t i = 0; i < shared.seconds.size(); ++i) {
    const SecondBucket& b = shared.seconds[i];
    csv += std::to_string(i) + "," + std::to_string(b.ops) + "," + std::to_string(b.writes) + "," +
           std::to_string(b.reads) + "," + std::to_string(b.errors) + "," +
           Fixed(b.max_latency_ms, 2) + "\n";
  }
  PGSHIFT_RETURN_IF_ERROR(WriteFileAtomic(opts.ledger + ".series.csv", csv));
  if (opts.slow_ms > 0) {
    std::string trace = "scheduled_unix_ms,done_unix_ms,latency_ms,client,op,ok\n";
    for (const SlowOp& o : shared.slow) {
      trace += Fixed((o.scheduled_us + unix_minus_monotonic_us) / 1000.0, 3) + "," +
               Fixed((o.done_us + unix_minus_monotonic_us) / 1000.0, 3) + "," +
               Fixed((o.done_us - o.scheduled_us) / 1000.0, 2) + "," + std::to_string(o.client) +
               "," + o.op + "," + (o.ok ? "1" : "0") + "\n";
    }
    PGSHIFT_RETURN_IF_ERROR(WriteFileAtomic(opts.ledger + ".slow.csv", trace));
  }
  nlohmann::json summary = {{"acknowledged", sum.acknowledged}, {"reads", sum.reads},
                            {"errors", sum.errors},             {"uncertain", sum.uncertain},
                            {"stale_reads", sum.stale_reads},   {"reconnects", sum.reconnects},
                            {"max_latency_ms", sum.max_latency_ms}, {"p50_ms", sum.p50_ms},
                            {"p99_ms", sum.p99_ms},             {"p999_ms", sum.p999_ms},
                            {"achieved_ops_per_s", sum.achieved_rate},
                            {"target_ops_per_s", opts.rate},    {"clients", opts.clients},
                            {"elapsed_s", sum.elapsed_s},       {"run", run_id},
                            {"started_unix_ms", UnixMillis() - (finished - start) / 1000}};
  PGSHIFT_RETURN_IF_ERROR(WriteFileAtomic(opts.ledger + ".summary.json", summary.dump(2) + "\n"));
  return sum;
}

Result<Ledger> ReadLedger(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::NotFound("cannot read ledger " + path);
  Ledger ledger;
  std::string line;
  int lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ss(line);
    std::string op;
    long long key = 0, a = 0, b = 0;
    ss >> op >> key;
    if (!ss) {
      // A torn last line (the writer was killed mid-write) is not an acknowledged write.
      if (in.peek() == EOF) break;
      return Status::InvalidArgument("ledger " + path + " line " + std::to_string(lineno) +
                                     " is not a ledger entry");
    }
    KeyState& k = ledger.keys[key];
    if (op == "I" || op == "U") {
      ss >> a;
      k = KeyState{true, a, false, {}};
      ledger.acknowledged++;
    } else if (op == "D") {
      k = KeyState{false, 0, false, {}};
      ledger.acknowledged++;
    } else if (op == "?") {
      ss >> a >> b;
      k = KeyState{false, 0, true, {a, b}};
    } else {
      return Status::InvalidArgument("ledger " + path + " line " + std::to_string(lineno) +
                                     ": unknown entry '" + op + "'");
    }
  }
  return ledger;
}

std::string VerifyReport::SummaryLine() const {
  return "acknowledged=" + std::to_string(acknowledged) + " present=" + std::to_string(present) +
         " missing=" + std::to_string(missing) + " mismatched=" + std::to_string(mismatched) +
         " keys=" + std::to_string(keys) + " deleted=" + std::to_string(deleted) +
         " uncertain=" + std::to_string(uncertain);
}

Result<VerifyReport> VerifyLoad(const std::string& dsn, const std::string& ledger_path) {
  PGSHIFT_ASSIGN_OR_RETURN(Ledger ledger, ReadLedger(ledger_path));
  PGSHIFT_ASSIGN_OR_RETURN(auto conn, pg::Connection::Connect(dsn, 10, "pgshift-load-verify"));
  auto exists = conn->QueryValue("SELECT to_regclass('pgshift_load.items') IS NOT NULL");
  if (!exists.ok()) return exists.status();
  VerifyReport rep;
  rep.acknowledged = ledger.acknowledged;
  rep.keys = static_cast<int64_t>(ledger.keys.size());
  std::map<int64_t, std::pair<int64_t, std::string>> rows;
  if (*exists == "t") {
    std::vector<int64_t> ids;
    for (const auto& [k, _] : ledger.keys) ids.push_back(k);
    for (size_t off = 0; off < ids.size(); off += 10000) {
      std::string arr = "{";
      for (size_t i = off; i < std::min(ids.size(), off + 10000); ++i) {
        if (i != off) arr += ",";
        arr += std::to_string(ids[i]);
      }
      arr += "}";
      PGSHIFT_ASSIGN_OR_RETURN(
          pg::QueryResult r,
          conn->Query("SELECT id, version, payload FROM pgshift_load.items WHERE id = ANY($1::bigint[])",
                      {arr}));
      for (int i = 0; i < r.rows(); ++i) {
        rows[std::stoll(r.Get(i, 0))] = {std::stoll(r.Get(i, 1)), r.Get(i, 2)};
      }
    }
  }
  auto problem = [&rep](const std::string& text) {
    if (rep.problems.size() < 20) rep.problems.push_back(text);
  };
  for (const auto& [key, want] : ledger.keys) {
    auto it = rows.find(key);
    bool found = it != rows.end();
    bool intact = found && it->second.second == LoadPayload(key, it->second.first);
    if (want.uncertain) {
      bool allowed = false;
      for (int64_t v : want.allowed) {
        if (v == 0 ? !found : (found && intact && it->second.first == v)) allowed = true;
      }
      if (allowed) {
        rep.uncertain++;
      } else {
        rep.mismatched++;
        problem("key " + std::to_string(key) + ": unknown last write, and the row is in neither possible state");
      }
    } else if (!want.present) {
      if (found) {
        rep.mismatched++;
        problem("key " + std::to_string(key) + ": deleted, but the row is there (version " +
                std::to_string(it->second.first) + ")");
      } else {
        rep.deleted++;
      }
    } else if (!found) {
      rep.missing++;
      problem("key " + std::to_string(key) + ": missing (expected version " +
              std::to_string(want.version) + ")");
    } else if (it->second.first != want.version || !intact) {
      rep.mismatched++;
      problem("key " + std::to_string(key) + ": expected version " + std::to_string(want.version) +
              ", found version " + std::to_string(it->second.first) +
              (intact ? "" : " with a payload that does not match"));
    } else {
      rep.present++;
    }
  }
  return rep;
}

}  // namespace pgshift::lab
