#include "lab/probe.h"

#include <atomic>
#include <cstdio>
#include <memory>
#include <mutex>
#include <thread>

#include "common/clock.h"
#include "pg/connection.h"

namespace pgshift::lab {

namespace {

constexpr const char* kInsert =
    "INSERT INTO pgshift_probe.writes (path) VALUES ($1) RETURNING "
    "(extract(epoch FROM clock_timestamp()) * 1000)::bigint, current_setting('port')";

// What runs before the INSERT, in the same session; nullptr: nothing.
const char* Preamble(ProbeMode mode) {
  switch (mode) {
    case ProbeMode::kPlain: return nullptr;
    case ProbeMode::kReadOnlyOff: return "SET default_transaction_read_only = off";
    case ProbeMode::kBeginRw: return "BEGIN READ WRITE";
    case ProbeMode::kSetTxRw: return "BEGIN; SET TRANSACTION READ WRITE";
  }
  return nullptr;
}

class Prober {
 public:
  Prober(const ProbePath& path, const ProbeOptions& options, FILE* out, std::mutex* out_mu)
      : path_(path), options_(options), out_(out), out_mu_(out_mu) {}

  void Run(int64_t end_ms) {
    for (int64_t next = MonotonicMillis(); next < end_ms; next += options_.interval_ms) {
      const int64_t wait = next - MonotonicMillis();
      if (wait > 0) SleepMillis(wait);
      Attempt();
    }
  }

  int64_t attempts() const { return attempts_; }
  int64_t successes() const { return successes_; }

 private:
  void Attempt() {
    attempts_++;
    if (!conn_ || conn_->broken()) {
      conn_.reset();
      auto c = pg::Connection::Connect(path_.dsn, 2, "pgshift-probe");
      if (!c.ok()) return;
      conn_ = std::move(*c);
    }
    const bool in_tx = path_.mode == ProbeMode::kBeginRw || path_.mode == ProbeMode::kSetTxRw;
    const char* preamble = Preamble(path_.mode);
    Status s = preamble ? conn_->Exec(preamble) : Status::Ok();
    Result<pg::QueryResult> r =
        s.ok() ? conn_->Query(kInsert, {path_.name}) : Result<pg::QueryResult>(s);
    if (in_tx) {
      // Always end the transaction: a failed statement leaves it aborted.
      Status end = conn_->Exec(r.ok() ? "COMMIT" : "ROLLBACK");
      if (!end.ok()) return;
    }
    if (!r.ok()) return;
    successes_++;
    std::lock_guard<std::mutex> lock(*out_mu_);
    fprintf(out_, "%s,%s,%s\n", r->Get(0, 0).c_str(), r->Get(0, 1).c_str(), path_.name.c_str());
    fflush(out_);
  }

  const ProbePath& path_;
  const ProbeOptions& options_;
  FILE* out_;
  std::mutex* out_mu_;
  std::unique_ptr<pg::Connection> conn_;
  int64_t attempts_ = 0, successes_ = 0;
};

}  // namespace

Result<ProbeMode> ParseProbeMode(const std::string& name) {
  if (name == "plain") return ProbeMode::kPlain;
  if (name == "readonly-off") return ProbeMode::kReadOnlyOff;
  if (name == "begin-rw") return ProbeMode::kBeginRw;
  if (name == "set-tx-rw") return ProbeMode::kSetTxRw;
  return Status::InvalidArgument("unknown probe mode '" + name +
                                 "' (want plain, readonly-off, begin-rw or set-tx-rw)");
}

Result<ProbeSummary> RunProbe(const ProbeOptions& options) {
  if (options.paths.empty()) return Status::InvalidArgument("the probe needs at least one path");
  FILE* out = fopen(options.out.c_str(), "a");
  if (out == nullptr) return Status::Unavailable("cannot open " + options.out);
  std::mutex out_mu;
  std::vector<std::unique_ptr<Prober>> probers;
  std::vector<std::thread> threads;
  const int64_t end = MonotonicMillis() + static_cast<int64_t>(options.duration_s * 1000);
  for (const auto& p : options.paths) {
    probers.push_back(std::make_unique<Prober>(p, options, out, &out_mu));
  }
  for (auto& p : probers) threads.emplace_back([&p, end] { p->Run(end); });
  for (auto& t : threads) t.join();
  fclose(out);
  ProbeSummary s;
  for (const auto& p : probers) {
    s.attempts += p->attempts();
    s.successes += p->successes();
  }
  return s;
}

}  // namespace pgshift::lab
