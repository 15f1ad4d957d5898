#include "engine/cutover_steps.h"

#include "engine/large_objects.h"

#include <algorithm>

#include "common/clock.h"
#include "common/log.h"
#include "common/strings.h"
#include "engine/ddl_carry.h"
#include "engine/fence.h"
#include "pg/conninfo.h"

namespace pgshift::engine {

namespace {

Observation Counted(int done, int total, const std::string& what) {
  Observation o;
  o.progress = done == total ? Progress::kDone : done == 0 ? Progress::kNotDone : Progress::kPartly;
  o.detail = what + " on " + std::to_string(done) + " of " + std::to_string(total) + " databases";
  return o;
}

}  // namespace

const Direction& Direction::Forward() {
  static const Direction d{"forward", Side::kSource,         Side::kTarget,          false,
                           true,      Phase::kRollbackReady, Phase::kReadyForCutover};
  return d;
}

const Direction& Direction::Rollback() {
  static const Direction d{"rollback", Side::kTarget,      Side::kSource,        true,
                           false,      Phase::kRolledBack, Phase::kRollbackReady};
  return d;
}

const Direction* Direction::Named(const std::string& name) {
  if (name == Forward().name) return &Forward();
  if (name == Rollback().name) return &Rollback();
  return nullptr;
}

CutoverSteps::CutoverSteps(const MigrationState& state, Router* router, const Direction& direction,
                           const CutoverHook* hook, std::function<void(const std::string&)> note)
    : state_(state), router_(router), d_(direction), hook_(hook), note_(std::move(note)) {}

std::vector<CutoverRow> CutoverSteps::Rows() {
  const Side o = d_.old_side, n = d_.new_side;
  std::vector<CutoverRow> rows;
  auto row = [&rows](std::string name, bool in_pause) -> CutoverRow& {
    rows.push_back(CutoverRow{});
    rows.back().name = std::move(name);
    rows.back().in_pause = in_pause;
    return rows.back();
  };

  CutoverRow& prepare = row("prepare", false);
  prepare.act = [this] { return Prepare(); };
  prepare.undo = [this] { return UndoPrepare(); };

  CutoverRow& pause = row("pause", true);
  pause.release_when_stuck = true;
  pause.act = [this, n] {
    PGSHIFT_RETURN_IF_ERROR(router_->Pause(state_.options.max_pause_ms));
    pause_deadline_ms_ = MonotonicMillis() + state_.options.max_pause_ms;
    if (router_->SwitchesEarly()) {
      // Clients reach no server until the resume: the router's move overlaps the steps up to
      // the switch, which then waits only for what is left of it. A router that holds at a
      // fenced side lets them go once it leads there and step catch-up is done (the new side
      // is fenced since step prepare): they log in meanwhile, and step open releases them.
      PGSHIFT_ASSIGN_OR_RETURN(Endpoint to, EndpointOf(Dsn(n)));
      router_->BeginSwitch(to, router_->HoldsAtFencedSide());
    }
    return Status::Ok();
  };
  pause.undo = [this, o] {
    if (router_->SwitchesEarly()) {
      // A switch begun early (BeginSwitch) may have moved the router before the step that
      // failed: clients go back to the old side before they are let go. When the router
      // cannot be read, it is switched back anyway; when that fails, clients stay held.
      auto sw = ObserveSwitch();
      if (!sw.ok() || sw->progress != Progress::kNotDone) {
        // Clients it let go wait on the new side's logins (HoldsAtFencedSide): held again
        // first ("already paused" counts as done), which ends those logins.
        if (router_->HoldsAtFencedSide()) {
          PGSHIFT_RETURN_IF_ERROR(router_->Pause(state_.options.max_pause_ms));
        }
        PGSHIFT_RETURN_IF_ERROR(Switch(o));
      }
    }
    return router_->Resume();
  };
  pause.observe = [this]() -> Result<Observation> {
    PGSHIFT_ASSIGN_OR_RETURN(RouterState st, router_->Observe());
    return Observation{!st.paused   ? Progress::kPartly
                       : *st.paused ? Progress::kDone
                                    : Progress::kNotDone,
                       false, st.detail};
  };

  CutoverRow& fence = row("fence", true);
  fence.ensure = true;
  fence.act = [this, o] { return Fence(o); };
  fence.undo = [this, o] { return Open(o); };
  fence.observe = [this, o] { return ObserveFence(o, true); };

  CutoverRow& catch_up = row("catch-up", true);
  catch_up.act = [this] {
    PGSHIFT_RETURN_IF_ERROR(CatchUp());
    if (router_->SwitchesEarly()) router_->NewSideCaughtUp();
    return Status::Ok();
  };

  CutoverRow& hook = row("consistent-point", true);
  hook.act = [this] { return RunHook(); };
  hook.undo = [this] {
    if (hook_ != nullptr && hook_->undo) hook_->undo();
    return Status::Ok();
  };

  CutoverRow& sequences = row("sequences", true);
  sequences.act = [this] { return Sequences(); };

  CutoverRow& replication = row("replication", true);
  replication.ensure = true;
  replication.act = [this] { return Replication(false); };
  replication.undo = [this] { return Replication(true); };
  replication.observe = [this] { return ObserveReplication(); };

  auto open_row = [&] {
    CutoverRow& open = row("open", true);
    open.ensure = true;
    open.act = [this, n] { return Open(n); };
    open.undo = [this, n] { return Fence(n); };
    open.observe = [this, n] { return ObserveFence(n, false); };
  };
  // A router that switches early (BeginSwitch) has been moving since the pause: the new side
  // opens meanwhile, and the switch only waits for the rest of the move. Clients are held
  // either way, and no client reaches the new side before the resume.
  const bool early = router_->SwitchesEarly();
  if (early) open_row();

  CutoverRow& sw = row("switch", true);
  sw.point_of_no_return = true;
  sw.ensure = true;
  sw.act = [this, n] { return Switch(n); };
  sw.undo = [this, o] { return Switch(o); };
  sw.observe = [this] { return ObserveSwitch(); };

  if (!early) open_row();

  CutoverRow& resume = row("resume", true);
  resume.ensure = true;
  resume.act = [this] { return Resume(); };
  resume.observe = [this]() -> Result<Observation> {
    PGSHIFT_ASSIGN_OR_RETURN(RouterState st, router_->Observe());
    return Observation{st.paused == false ? Progress::kDone : Progress::kNotDone, false, st.detail};
  };

  CutoverRow& reverse = row("reverse-subscription", false);
  reverse.ensure = true;
  reverse.act = [this] { return ReverseSubscription(); };
  reverse.observe = [this] { return ObserveReverseSubscription(); };

  CutoverRow& drain = row("drain", false);
  drain.after_commit = true;
  drain.act = [this] { return Drain(); };
  return rows;
}

namespace {

// The reverse slot: a failover slot on 17+, like the forward one (wal_retention.h).
std::string CreateLogicalSlotSql(const pg::Connection& c) {
  return c.ServerMajor() >= 17
             ? "SELECT pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)"
             : "SELECT pg_create_logical_replication_slot($1, 'pgoutput')";
}

}  // namespace

const std::string& CutoverSteps::Dsn(Side side) const {
  return side == Side::kSource ? state_.source_dsn : state_.target_dsn;
}

const char* CutoverSteps::SideName(Side side) const {
  return side == Side::kSource ? "source" : "target";
}

Result<pg::Connection*> CutoverSteps::Session(Side side, const DatabaseState& db) {
  Sessions& s = sessions_[db.name];
  ConnPtr& c = side == d_.old_side ? s.old_side : s.new_side;
  if (c == nullptr || c->broken()) {
    c.reset();
    PGSHIFT_ASSIGN_OR_RETURN(c, Connect(Dsn(side), db.name, SideName(side)));
  }
  return c.get();
}

std::vector<int> CutoverSteps::OwnPids(Side side) const {
  std::vector<int> out;
  for (const auto& [name, s] : sessions_) {
    const ConnPtr& c = side == d_.old_side ? s.old_side : s.new_side;
    if (c != nullptr && !c->broken()) out.push_back(c->BackendPid());
  }
  if (hook_ != nullptr && hook_->sessions) {
    for (int pid : hook_->sessions(side)) out.push_back(pid);
  }
  return out;
}

std::vector<std::string> CutoverSteps::DatabaseNames() const {
  std::vector<std::string> out;
  for (const auto& db : state_.databases) out.push_back(db.name);
  return out;
}

int64_t CutoverSteps::Deadline() const {
  return pause_deadline_ms_ > 0 ? pause_deadline_ms_ : MonotonicMillis() + 10000;
}

std::string CutoverSteps::StoppingSubscription(const DatabaseState& db) const {
  return d_.stops_reverse_subscription ? state_.ReverseName(db) : state_.SubscriptionName(db);
}

Status CutoverSteps::Fence(Side side) {
  for (const auto& db : state_.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(pg::Connection * c, Session(side, db));
    PGSHIFT_RETURN_IF_ERROR(FenceOn(*c, db.name, OwnPids(side), Deadline())
                                .WithContext(std::string(SideName(side)) + " " + db.name));
    if (side == Side::kSource && side == d_.old_side) {
      // DDL that slipped in after the last check before the pause (the fence now refuses
      // more): not carried yet, and a table it made would not be published. Undone, the
      // attempt's retry checks (and carries) it first.
      PGSHIFT_ASSIGN_OR_RETURN(int64_t n, CountDdlLog(*c, db.ddl_mark));
      if (n != static_cast<int64_t>(db.ddl_carried.size())) {
        return Status::Unavailable("DDL ran on the source database " + db.name +
                                   " just before the pause; it is checked and carried first");
      }
    }
  }
  return Status::Ok();
}

Status CutoverSteps::Open(Side side) {
  const Side other = side == Side::kSource ? Side::kTarget : Side::kSource;
  for (const auto& db : state_.databases) {
    auto oc = Session(other, db);
    if (oc.ok()) {
      PGSHIFT_ASSIGN_OR_RETURN(bool fenced, FenceState(**oc));
      if (!fenced) {
        return Status::FailedPrecondition(std::string("refusing to open the ") + SideName(side) +
                                          " database " + db.name + ": the " + SideName(other) +
                                          " is not fenced, and both would take writes");
      }
    } else {
      LogWarn(std::string("opening the ") + SideName(side) + " database " + db.name +
              " while the " + SideName(other) + " cannot be reached (" + oc.status().message() +
              "); its fence stays in its catalog");
    }
    PGSHIFT_ASSIGN_OR_RETURN(pg::Connection * c, Session(side, db));
    PGSHIFT_RETURN_IF_ERROR(FenceOff(*c, db.name));
    // Sessions that began while it was fenced keep their read-only default: end them, so that
    // their clients come back writable. A pooler's held sessions make themselves writable, and
    // their clients are about to run on them.
    PGSHIFT_RETURN_IF_ERROR(
        EndClientSessions(*c, {db.name}, OwnPids(side), MonotonicMillis() + 2000, true).status());
  }
  return Status::Ok();
}

Result<Observation> CutoverSteps::ObserveFence(Side side, bool want_on) {
  int matching = 0;
  for (const auto& db : state_.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(pg::Connection * c, Session(side, db));
    PGSHIFT_ASSIGN_OR_RETURN(bool on, FenceState(*c));
    if (on == want_on) matching++;
  }
  return Counted(matching, static_cast<int>(state_.databases.size()),
                 std::string(SideName(side)) + (want_on ? " fenced" : " open"));
}

Status CutoverSteps::Prepare() {
  const bool reverse_slot = d_.starts_reverse_subscription && state_.options.rollback_replication;
  for (const auto& db : state_.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(pg::Connection * oc, Session(d_.old_side, db));
    PGSHIFT_ASSIGN_OR_RETURN(pg::Connection * nc, Session(d_.new_side, db));
    const std::string fence = state_.FenceName();
    PGSHIFT_RETURN_IF_ERROR(InstallFence(*oc, fence).WithContext(SideName(d_.old_side)));
    PGSHIFT_RETURN_IF_ERROR(InstallFence(*nc, fence).WithContext(SideName(d_.new_side)));
    // The new side takes no client write until step open (it normally is fenced already:
    // since ReadyForCutover, or since the cutover for a rollback).
    PGSHIFT_ASSIGN_OR_RETURN(bool fenced, FenceState(*nc));
    if (!fenced) {
      PGSHIFT_RETURN_IF_ERROR(FenceOn(*nc, db.name, OwnPids(d_.new_side), MonotonicMillis() + 10000)
                                  .WithContext(SideName(d_.new_side)));
    }
    // An attempt undone while the server was away may have left replication stopped.
    PGSHIFT_ASSIGN_OR_RETURN(
        pg::QueryResult enabled,
        nc->Query("SELECT subenabled FROM pg_subscription WHERE subname = $1",
                  {StoppingSubscription(db)}));
    if (enabled.rows() > 0 && enabled.Get(0, 0) == "f") {
      PGSHIFT_RETURN_IF_ERROR(
          nc->Exec("ALTER SUBSCRIPTION " + nc->QuoteIdent(StoppingSubscription(db)) + " ENABLE"));
    }
    if (reverse_slot) {
      // Made now, outside the pause (making a slot waits for a consistent point, tens of ms);
      // in the pause it is only moved past what the forward replication wrote, so it starts
      // exactly at the first write clients make on the target.
      const std::string rev = state_.ReverseName(db);
      PGSHIFT_RETURN_IF_ERROR(DropSlotIfIdle(*nc, rev));
      PGSHIFT_RETURN_IF_ERROR(
          nc->Query(CreateLogicalSlotSql(*nc), {rev})
              .status()
              .WithContext("target " + db.name + ": reverse replication slot"));
      PGSHIFT_RETURN_IF_ERROR(AdvanceSlotToNow(*nc, rev));
    }
  }
  return Status::Ok();
}

// Clients are not concerned: a reverse slot left on a target that cannot be reached now is
// dropped by the next attempt's prepare, by finish or by abort.
Status CutoverSteps::UndoPrepare() {
  if (!d_.starts_reverse_subscription || !state_.options.rollback_replication) return Status::Ok();
  for (const auto& db : state_.databases) {
    auto nc = Session(d_.new_side, db);
    Status s = nc.ok() ? DropSlotIfIdle(**nc, state_.ReverseName(db)) : nc.status();
    if (!s.ok()) LogWarn("reverse slot of " + db.name + " left for later: " + s.message());
  }
  return Status::Ok();
}

// The marker: committed on the old side with synchronous_commit = on (pgshift's sessions),
// so its WAL is flushed and sent at once; once the new side shows it, every earlier write of
// the old side is there.
Status CutoverSteps::CatchUp() {
  std::vector<std::pair<const DatabaseState*, std::string>> tokens;
  for (const auto& db : state_.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(pg::Connection * oc, Session(d_.old_side, db));
    std::string token = RandomHex(16);
    PGSHIFT_RETURN_IF_ERROR(
        oc->Query("UPDATE _pgshift.marker SET token = $1, at = now() WHERE id = 1", {token})
            .status());
    tokens.emplace_back(&db, token);
  }
  const int64_t deadline = Deadline();
  for (const auto& [db, token] : tokens) {
    PGSHIFT_ASSIGN_OR_RETURN(pg::Connection * nc, Session(d_.new_side, *db));
    while (true) {
      PGSHIFT_ASSIGN_OR_RETURN(std::string v,
                               nc->QueryValue("SELECT token FROM _pgshift.marker WHERE id = 1"));
      if (v == token) break;
      if (MonotonicMillis() > deadline) {
        return Status::DeadlineExceeded(std::string("the ") + SideName(d_.new_side) +
                                        " did not apply the marker of " + db->name +
                                        " within --max-pause");
      }
      SleepMillis(1);
    }
  }
  return Status::Ok();
}

Status CutoverSteps::RunHook() {
  if (hook_ == nullptr || !hook_->run) return Status::Ok();
  CutoverContext ctx;
  ctx.direction = &d_;
  ctx.migration_id = state_.id;
  ctx.deadline_ms = Deadline();
  for (const auto& db : state_.databases) {
    CutoverDatabase cd;
    cd.name = db.name;
    PGSHIFT_ASSIGN_OR_RETURN(cd.old_side, Session(d_.old_side, db));
    PGSHIFT_ASSIGN_OR_RETURN(cd.new_side, Session(d_.new_side, db));
    PGSHIFT_ASSIGN_OR_RETURN(cd.old_dsn, pg::DsnForDatabase(Dsn(d_.old_side), db.name));
    PGSHIFT_ASSIGN_OR_RETURN(cd.new_dsn, pg::DsnForDatabase(Dsn(d_.new_side), db.name));
    ctx.databases.push_back(std::move(cd));
  }
  return hook_->run(ctx).WithContext(hook_->name);
}

// What logical replication does not carry, old -> new, with the old side fenced: sequence
// positions, and the large objects written since the pass made before the pause.
Status CutoverSteps::Sequences() {
  const bool forward = d_.old_side == Side::kSource;
  for (const auto& db : state_.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(pg::Connection * oc, Session(d_.old_side, db));
    PGSHIFT_ASSIGN_OR_RETURN(pg::Connection * nc, Session(d_.new_side, db));
    PGSHIFT_RETURN_IF_ERROR(SyncSequences(*oc, *nc));
    PGSHIFT_ASSIGN_OR_RETURN(bool any, AnyLargeObjects(*oc, *nc));
    if (any) {
      auto pass = SyncLargeObjects(*oc, *nc, forward ? db.lo_horizon : db.lo_reverse_horizon);
      if (!pass.ok()) return pass.status().WithContext(db.name);
      if (pass->copied + pass->unlinked > 0) {
        note_(db.name + ": " + std::to_string(pass->copied) + " large object(s) copied and " +
              std::to_string(pass->unlinked) + " unlinked inside the pause");
      }
    }
    if (forward) {
      // Clients write on the target only after this: a pass back starts here.
      PGSHIFT_ASSIGN_OR_RETURN(reverse_lo_horizons_[db.name], LargeObjectHorizonNow(*nc));
    }
  }
  return Status::Ok();
}

// Stopping: the old direction stops before anything is written on the new side; forward, the
// reverse slot is moved to the target's current position, so it starts exactly at the first
// client write there and nothing echoes back. Starting again undoes the stop.
Status CutoverSteps::Replication(bool enabled) {
  for (const auto& db : state_.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(pg::Connection * nc, Session(d_.new_side, db));
    const std::string sub = nc->QuoteIdent(StoppingSubscription(db));
    PGSHIFT_RETURN_IF_ERROR(
        nc->Exec("ALTER SUBSCRIPTION " + sub + (enabled ? " ENABLE" : " DISABLE")));
    if (!enabled && d_.starts_reverse_subscription && state_.options.rollback_replication) {
      PGSHIFT_RETURN_IF_ERROR(AdvanceSlotToNow(*nc, state_.ReverseName(db)));
    }
  }
  return Status::Ok();
}

Result<Observation> CutoverSteps::ObserveReplication() {
  int stopped = 0;
  for (const auto& db : state_.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(pg::Connection * nc, Session(d_.new_side, db));
    PGSHIFT_ASSIGN_OR_RETURN(pg::QueryResult r,
                             nc->Query("SELECT subenabled FROM pg_subscription WHERE subname = $1",
                                       {StoppingSubscription(db)}));
    if (r.rows() == 0 || r.Get(0, 0) == "f") stopped++;
  }
  return Counted(stopped, static_cast<int>(state_.databases.size()),
                 "subscription into the " + std::string(SideName(d_.new_side)) + " stopped");
}

Result<Observation> CutoverSteps::ObserveSwitch() {
  PGSHIFT_ASSIGN_OR_RETURN(RouterState st, router_->Observe());
  PGSHIFT_ASSIGN_OR_RETURN(Endpoint to, EndpointOf(Dsn(d_.new_side)));
  PGSHIFT_ASSIGN_OR_RETURN(Endpoint from, EndpointOf(Dsn(d_.old_side)));
  Observation o;
  o.progress = st.LeadsOnlyTo(to)     ? Progress::kDone
               : st.LeadsOnlyTo(from) ? Progress::kNotDone
                                      : Progress::kPartly;
  o.clients_may_be_on_new_side = st.MayReach(to);
  o.detail = router_->Kind() + (st.live ? "" : " (not live)") + ": " + st.detail;
  if (o.clients_may_be_on_new_side && router_->SwitchesEarly()) {
    // This router may have moved while the steps ahead of the switch ran (BeginSwitch), so its
    // position does not say they were done. The new side's fence does: step open lifts it
    // only after the catch-up, the sequences and the replication's stop, and while it holds
    // no client wrote there, so going back loses nothing (going forward could skip a catch-up
    // or the sequences). Unreadable: as the router says.
    auto fenced = ObserveFence(d_.new_side, true);
    if (fenced.ok() && fenced->progress == Progress::kDone) {
      o.clients_may_be_on_new_side = false;
      o.detail += "; the " + std::string(SideName(d_.new_side)) +
                  " is still fenced, so no client wrote there";
    }
  }
  return o;
}

Status CutoverSteps::Switch(Side side) {
  PGSHIFT_ASSIGN_OR_RETURN(Endpoint to, EndpointOf(Dsn(side)));
  Status s = router_->SwitchTo(to);
  if (s.code() != StatusCode::kDeadlineExceeded || !router_->SettlesByItself()) return s;
  // The configuration changed and the live path is late: from here clients may reach the new
  // side at any moment, so this is the switch, made; waiting longer holds nothing.
  auto st = router_->Observe();
  if (!st.ok() || st->config.empty() ||
      !std::all_of(st->config.begin(), st->config.end(),
                   [&to](const Endpoint& e) { return e == to; })) {
    return s;
  }
  note_("switch: " + router_->Kind() + " is configured for the " + SideName(side) +
        " but its live view had not followed (" + s.message() + "; " + st->detail +
        "): clients reach the " + SideName(side) + " as it does; the " +
        SideName(side == d_.new_side ? d_.old_side : d_.new_side) + " stays fenced meanwhile");
  return Status::Ok();
}

Status CutoverSteps::Resume() {
  PGSHIFT_RETURN_IF_ERROR(router_->Resume());
  if (!router_->HoldsTraffic() && !router_->WaitsForPeople()) {
    // A router that cannot hold clients keeps the sessions it already carries to the old side:
    // end them, so that their clients reconnect, to the new side.
    PGSHIFT_ASSIGN_OR_RETURN(pg::Connection * oc, Session(d_.old_side, state_.databases.at(0)));
    (void)EndClientSessions(*oc, DatabaseNames(), OwnPids(d_.old_side), MonotonicMillis() + 2000);
  }
  return Status::Ok();
}

Status CutoverSteps::ReverseSubscription() {
  if (!d_.starts_reverse_subscription || !state_.options.rollback_replication) return Status::Ok();
  for (const auto& db : state_.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(pg::Connection * src, Session(d_.old_side, db));
    PGSHIFT_ASSIGN_OR_RETURN(pg::Connection * dst, Session(d_.new_side, db));
    const std::string rev = state_.ReverseName(db);
    if (!Exists(*src, kHasSubscription, rev) && !Exists(*dst, kHasSlot, rev)) {
      PGSHIFT_RETURN_IF_ERROR(
          dst->Query(CreateLogicalSlotSql(*dst), {rev}).status());
      note_(db.name +
            ": the reverse slot was lost and made again after the switch; writes on "
            "the target before that are not replicated back");
    }
    PGSHIFT_RETURN_IF_ERROR(CreateReverseSubscription(*src, *dst, state_.target_dsn, db.name, rev));
  }
  return Status::Ok();
}

Result<Observation> CutoverSteps::ObserveReverseSubscription() {
  if (!d_.starts_reverse_subscription || !state_.options.rollback_replication) {
    return Observation{Progress::kDone, false, "no reverse subscription in this direction"};
  }
  int made = 0;
  for (const auto& db : state_.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(pg::Connection * src, Session(d_.old_side, db));
    if (Exists(*src, kHasSubscription, state_.ReverseName(db))) made++;
  }
  return Counted(made, static_cast<int>(state_.databases.size()), "reverse subscription made");
}

Status CutoverSteps::Drain() {
  if (router_->HoldsTraffic() || router_->WaitsForPeople()) return Status::Ok();
  PGSHIFT_ASSIGN_OR_RETURN(pg::Connection * oc, Session(d_.old_side, state_.databases.at(0)));
  DrainOldSide(*oc, DatabaseNames(), OwnPids(d_.old_side), /*quiet_ms=*/1500, /*max_ms=*/15000);
  return Status::Ok();
}

}  // namespace pgshift::engine
