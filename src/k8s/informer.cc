#include "k8s/informer.h"

namespace pgshift::k8s {

Informer::Informer(Client* client, Reflector::Options options)
    : reflector_(client, std::move(options),
                 Reflector::Handlers{
                     [this](std::vector<Json> items, const std::string&) {
                       Replace(std::move(items));
                     },
                     [this](const WatchEvent& ev) { Apply(ev); }}) {}

Informer::~Informer() { Stop(); }

void Informer::AddHandler(EventHandler handler) { handlers_.push_back(std::move(handler)); }

void Informer::Start() { reflector_.Start(); }

void Informer::Stop() { reflector_.Stop(); }

bool Informer::WaitForSync(Duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return synced_cv_.wait_for(lock, timeout, [this] { return synced_; });
}

std::optional<Json> Informer::Get(const std::string& key) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = cache_.find(key);
  if (it == cache_.end()) return std::nullopt;
  return it->second;
}

std::vector<Json> Informer::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Json> out;
  out.reserve(cache_.size());
  for (const auto& [k, v] : cache_) out.push_back(v);
  return out;
}

void Informer::Replace(std::vector<Json> items) {
  std::map<std::string, Json> fresh;
  for (Json& item : items) {
    std::string key = KeyOf(item);
    fresh[key] = std::move(item);
  }
  std::vector<Json> added;
  std::vector<std::pair<Json, Json>> updated;
  std::vector<Json> deleted;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [key, obj] : fresh) {
      auto it = cache_.find(key);
      if (it == cache_.end()) {
        added.push_back(obj);
      } else if (ResourceVersionOf(it->second) != ResourceVersionOf(obj)) {
        updated.emplace_back(it->second, obj);
      }
    }
    for (const auto& [key, obj] : cache_) {
      if (!fresh.count(key)) deleted.push_back(obj);
    }
    cache_ = std::move(fresh);
    synced_ = true;
  }
  synced_cv_.notify_all();
  for (const EventHandler& h : handlers_) {
    for (const Json& o : added) {
      if (h.on_add) h.on_add(o);
    }
    for (const auto& [old_obj, obj] : updated) {
      if (h.on_update) h.on_update(old_obj, obj);
    }
    for (const Json& o : deleted) {
      if (h.on_delete) h.on_delete(o);
    }
  }
}

void Informer::Apply(const WatchEvent& ev) {
  std::string key = KeyOf(ev.object);
  std::optional<Json> old_obj;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = cache_.find(key);
    if (it != cache_.end()) old_obj = it->second;
    if (ev.type == "DELETED") {
      cache_.erase(key);
    } else {
      cache_[key] = ev.object;
    }
  }
  for (const EventHandler& h : handlers_) {
    if (ev.type == "DELETED") {
      if (h.on_delete) h.on_delete(old_obj ? *old_obj : ev.object);
    } else if (old_obj) {
      if (h.on_update) h.on_update(*old_obj, ev.object);
    } else {
      if (h.on_add) h.on_add(ev.object);
    }
  }
}

EventHandler EnqueueHandler(WorkQueue* queue) {
  return EventHandler{
      [queue](const Json& o) { queue->Add(KeyOf(o)); },
      [queue](const Json&, const Json& o) { queue->Add(KeyOf(o)); },
      [queue](const Json& o) { queue->Add(KeyOf(o)); },
  };
}

}  // namespace pgshift::k8s
