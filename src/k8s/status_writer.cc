#include "k8s/status_writer.h"

#include "k8s/api_error.h"
#include "k8s/logging.h"

namespace pgshift::k8s {
namespace {

constexpr int kAttempts = 10;

int64_t StoredEpoch(const Json& object) {
  auto st = object.find("status");
  if (st == object.end() || !st->is_object()) return -1;
  auto e = st->find(kLeaderEpochField);
  return e != st->end() && e->is_number_integer() ? e->get<int64_t>() : -1;
}

}  // namespace

StatusWriter::StatusWriter(Client* client, Resource resource, StatusFence fence)
    : client_(client), resource_(std::move(resource)), fence_(std::move(fence)) {}

std::shared_ptr<StatusWriter::Entry> StatusWriter::EntryFor(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& e = entries_[key];
  if (!e) e = std::make_shared<Entry>();
  return e;
}

void StatusWriter::Forget(const std::string& ns, const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  entries_.erase(ns + "/" + name);
}

int64_t StatusWriter::puts() const {
  std::lock_guard<std::mutex> lock(mu_);
  return puts_;
}

int64_t StatusWriter::conflicts() const {
  std::lock_guard<std::mutex> lock(mu_);
  return conflicts_;
}

Status StatusWriter::Fenced(const Json& object, int64_t* epoch) const {
  if (fence_.holds_lease && !fence_.holds_lease()) {
    return Status::Aborted("status not written: this process no longer holds the leader Lease");
  }
  if (!fence_.epoch) return Status::Ok();
  *epoch = fence_.epoch();
  const int64_t stored = StoredEpoch(object);
  if (stored > *epoch) {
    return Status::Aborted("status not written: a newer leader (epoch " + std::to_string(stored) +
                           ") writes " + KeyOf(object) + "; this process's epoch is " +
                           std::to_string(*epoch));
  }
  return Status::Ok();
}

Status StatusWriter::Write(const std::string& ns, const std::string& name, const Json& patch) {
  std::shared_ptr<Entry> entry = EntryFor(ns + "/" + name);
  std::lock_guard<std::mutex> lock(entry->mu);
  Status last;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    if (entry->last.is_null()) {
      Result<Json> got = client_->Get(resource_, ns, name);
      if (!got.ok()) return got.status();
      entry->last = std::move(*got);
    }
    int64_t epoch = -1;
    PGSHIFT_RETURN_IF_ERROR(Fenced(entry->last, &epoch));
    Json object = entry->last;
    Json& status = object["status"];
    if (!status.is_object()) status = Json::object();
    const Json before = status;
    status.merge_patch(patch);
    if (epoch >= 0) status[kLeaderEpochField] = epoch;
    if (status == before) return Status::Ok();  // nothing to change
    Result<Json> put = client_->Update(resource_, ns, object, "status");
    if (put.ok()) {
      std::lock_guard<std::mutex> l(mu_);
      ++puts_;
      entry->last = std::move(*put);
      return Status::Ok();
    }
    entry->last = Json();  // read it again before the next write
    if (!IsConflict(put.status())) return put.status();
    {
      std::lock_guard<std::mutex> l(mu_);
      ++conflicts_;
    }
    last = put.status();
    Log(LogLevel::kDebug, "status of " + ns + "/" + name + " changed meanwhile; merging again");
  }
  return last.WithContext("status of " + ns + "/" + name + ": giving up after " +
                          std::to_string(kAttempts) + " conflicts");
}

}  // namespace pgshift::k8s
