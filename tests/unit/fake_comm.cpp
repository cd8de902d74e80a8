#include "fake_comm.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <thread>
#include <tuple>
#include <vector>

namespace longattn::test {
namespace {

// Backstop behind the deadlock detection (which cannot see a rank spinning on test()): a wait during
// which nothing at all changes in the world for this long, far beyond any step of a unit test, fails it.
constexpr auto kStall = std::chrono::seconds(120);

enum class Kind {
    all_to_all_v,
    all_reduce_sum_f64,
    all_reduce_sum_i64,
    all_reduce_max,
    all_gather_v,
    broadcast,
    barrier,
    split,
};

const char* kind_name(Kind k) {
    switch (k) {
        case Kind::all_to_all_v: return "all_to_all_v";
        case Kind::all_reduce_sum_f64: return "all_reduce_sum(double)";
        case Kind::all_reduce_sum_i64: return "all_reduce_sum(int64)";
        case Kind::all_reduce_max: return "all_reduce_max";
        case Kind::all_gather_v: return "all_gather_v";
        case Kind::broadcast: return "broadcast";
        case Kind::barrier: return "barrier";
        default: return "split";
    }
}

// One posted send or receive; Request::id is its slot in the endpoint.
struct Op {
    bool send = false;
    const void* src = nullptr;  // send: the bytes
    void* dst = nullptr;        // receive: where they land
    std::size_t bytes = 0;
    int peer = 0, tag = 0;
    bool in_use = false, launched = false, matched = false;
    std::uint64_t batch = 0;  // Batches::ordered, once launched
};

struct Batch {
    std::vector<int> ops;
    std::size_t unmatched = 0;   // operations whose peer has not been matched yet
    std::size_t unreleased = 0;  // requests not yet reported complete; the record lives until 0
};

// One member's state in one communicator.
struct Endpoint {
    std::vector<Op> ops;
    std::vector<int> pending;  // posted since the last launch
    std::map<std::uint64_t, Batch> batches;
    std::deque<std::uint64_t> queued;  // launched, behind the active batch
    bool active = false;               // a batch of this member is being matched
    std::uint64_t next_batch = 0;
    std::uint64_t collectives = 0;  // collective calls so far
};

struct Ref {
    int member, op;
};
// Sends and receives of one (source, destination, tag), each in posting order.
struct Channel {
    std::deque<Ref> sends, recvs;
};

// The state of one communicator, shared by its members.
struct Group {
    int id = 0;
    std::vector<int> world;  // world rank of each member
    std::vector<Endpoint> ends;
    std::map<std::tuple<int, int, int>, Channel> channels;
    // The collective in progress: round r gathers every member's arguments, runs, and ends when all
    // members have left it.
    std::uint64_t round = 0;
    int arrived = 0, departed = 0, in_body = 0;
    std::vector<const void*> args;
    std::vector<Kind> kinds;

    Group(int gid, std::vector<int> world_ranks)
        : id(gid), world(std::move(world_ranks)), ends(world.size()), args(world.size()), kinds(world.size()) {}
    int size() const { return static_cast<int>(world.size()); }
};

std::string bytes_text(std::size_t n) {
    std::string s = std::to_string(n);
    s.append("-byte");
    return s;
}

}  // namespace

struct FakeWorld::Impl {
    Impl(int n, Batches b) : size(n), batches(b), live(n), waiting_for(static_cast<std::size_t>(n)),
                             done(static_cast<std::size_t>(n), 0), handed_out(static_cast<std::size_t>(n), 0) {
        std::vector<int> all(static_cast<std::size_t>(n));
        for (int r = 0; r < n; ++r) all[static_cast<std::size_t>(r)] = r;
        world_group = std::make_shared<Group>(next_group++, std::move(all));
        last_change = std::chrono::steady_clock::now();
    }

    const int size;
    const Batches batches;
    mutable std::mutex mu;
    std::condition_variable cv;
    bool failed = false;
    std::string why;
    // Deadlock detection: gen counts state changes; seen_current counts the waiters that have found
    // their condition false since the last change. When that is every live rank, nothing can change.
    std::uint64_t gen = 0;
    int seen_current = 0;
    int live;
    std::chrono::steady_clock::time_point last_change;
    std::vector<std::string> waiting_for;  // per world rank, "" when not waiting
    std::vector<char> done, handed_out;
    std::int64_t splits = 0;
    int next_group = 0;
    std::shared_ptr<Group> world_group;

    void changed() {
        ++gen;
        seen_current = 0;
        last_change = std::chrono::steady_clock::now();
        cv.notify_all();
    }

    void fail_locked(const std::string& reason) {
        if (!failed) {
            failed = true;
            why = reason;
        }
        changed();
    }

    [[noreturn]] void misuse(const std::string& msg) {
        fail_locked(msg);
        throw FakeCommError(msg);
    }

    [[noreturn]] void released(const std::string& who, const std::string& what) const {
        std::string msg = who;
        msg.append(": ").append(what).append(" abandoned, the world failed: ");
        msg.append(why);
        throw FakeWorldFailed(msg);
    }

    std::string report() const {
        std::string s;
        for (int r = 0; r < size; ++r) {
            const auto u = static_cast<std::size_t>(r);
            s.append(r == 0 ? "" : "; ").append("rank ").append(std::to_string(r)).append(": ");
            s.append(done[u] ? "finished" : waiting_for[u].empty() ? "running" : waiting_for[u]);
        }
        return s;
    }

    // Waits, with the lock held on entry and exit, until ready(); throws FakeWorldFailed when the world
    // fails first (unless check_failed is false: ready() must then cover failure itself).
    template <class Ready>
    void block(std::unique_lock<std::mutex>& lk, int world_rank, const std::string& who, const std::string& what,
               Ready&& ready, bool check_failed = true) {
        const auto u = static_cast<std::size_t>(world_rank);
        for (;;) {
            if (check_failed && failed) {
                waiting_for[u].clear();
                released(who, what);
            }
            if (ready()) break;
            waiting_for[u] = what;
            const std::uint64_t seen = gen;
            if (++seen_current == live) {
                std::string msg = "deadlock: every rank still running waits and none can be served (";
                msg.append(report()).append(")");
                fail_locked(msg);
                continue;  // released above, or ready() if it covers failure
            }
            cv.wait_for(lk, std::chrono::seconds(1));
            if (gen == seen) {
                --seen_current;
                if (std::chrono::steady_clock::now() - last_change > kStall) {
                    std::string msg = "no progress for 120 s (";
                    msg.append(report()).append(")");
                    fail_locked(msg);
                }
            }
        }
        waiting_for[u].clear();
    }

    // Point-to-point matching, lock held. An operation enters its channel when it becomes matchable
    // (posted under Batches::eager, its batch active under Batches::ordered).
    void enqueue(Group& g, int member, int id) {
        const Op& op = g.ends[static_cast<std::size_t>(member)].ops[static_cast<std::size_t>(id)];
        const auto key = op.send ? std::make_tuple(member, op.peer, op.tag) : std::make_tuple(op.peer, member, op.tag);
        Channel& ch = g.channels[key];
        (op.send ? ch.sends : ch.recvs).push_back({member, id});
        while (!failed && !ch.sends.empty() && !ch.recvs.empty()) {
            const Ref s = ch.sends.front(), r = ch.recvs.front();
            ch.sends.pop_front();
            ch.recvs.pop_front();
            deliver(g, s, r);
        }
    }

    void deliver(Group& g, Ref s, Ref r) {
        Op& so = g.ends[static_cast<std::size_t>(s.member)].ops[static_cast<std::size_t>(s.op)];
        Op& ro = g.ends[static_cast<std::size_t>(r.member)].ops[static_cast<std::size_t>(r.op)];
        if (so.bytes > ro.bytes) {
            std::string msg = "a ";
            msg.append(bytes_text(so.bytes)).append(" message from rank ").append(std::to_string(s.member));
            msg.append(" to rank ").append(std::to_string(r.member)).append(" (tag ").append(std::to_string(so.tag));
            msg.append(", comm ").append(std::to_string(g.id)).append(") is larger than its ");
            msg.append(bytes_text(ro.bytes)).append(" receive");
            fail_locked(msg);
            return;
        }
        if (so.bytes > 0) std::memcpy(ro.dst, so.src, so.bytes);
        so.matched = ro.matched = true;
        settle(g, s.member, so);
        settle(g, r.member, ro);
    }

    // Under Batches::ordered a batch whose last operation is matched lets the member's next one in.
    void settle(Group& g, int member, const Op& op) {
        if (batches == Batches::eager) return;
        Endpoint& e = g.ends[static_cast<std::size_t>(member)];
        if (--e.batches.at(op.batch).unmatched > 0) return;
        e.active = false;
        activate(g, member);
    }

    void activate(Group& g, int member) {
        Endpoint& e = g.ends[static_cast<std::size_t>(member)];
        if (e.active || e.queued.empty()) return;
        const std::uint64_t id = e.queued.front();
        e.queued.pop_front();
        e.active = true;
        const std::vector<int> ops = e.batches.at(id).ops;
        for (int op : ops) enqueue(g, member, op);
    }
};

namespace {

using Impl = FakeWorld::Impl;
using Args = std::vector<const void*>;

class FakeCommunicator final : public comm::Communicator {
public:
    FakeCommunicator(Impl& w, std::shared_ptr<Group> g, int member) : w_(w), g_(std::move(g)), me_(member) {}

    ~FakeCommunicator() override {
        std::lock_guard<std::mutex> lk(w_.mu);
        const Endpoint& e = ep();
        const auto open = std::count_if(e.ops.begin(), e.ops.end(), [](const Op& op) { return op.in_use; });
        if (open == 0 || w_.failed) return;
        // Its buffers may be gone: nothing may be matched against them any more.
        std::string msg = who();
        msg.append(std::uncaught_exceptions() > 0 ? " left by an exception (see that rank's error) with "
                                                  : " was destroyed with ");
        msg.append(std::to_string(open)).append(" requests outstanding");
        w_.fail_locked(msg);
    }

    int rank() const override { return me_; }
    int size() const override { return g_->size(); }

    comm::Request isend(const void* buf, std::size_t bytes, int dest, int tag) override {
        const comm::Request r = post(true, const_cast<void*>(buf), bytes, dest, tag);
        bytes_sent_ += bytes;
        return r;
    }
    comm::Request irecv(void* buf, std::size_t bytes, int src, int tag) override {
        return post(false, buf, bytes, src, tag);
    }

    bool test(comm::Request& r) override {
        if (!r.active()) return true;
        std::unique_lock<std::mutex> lk(w_.mu);
        const int id = check_request(r, "test");
        if (!op(id).launched) launch();
        if (w_.failed) w_.released(who(), "test(" + describe(id) + ")");
        if (!complete(id)) return false;
        release(id);
        r = comm::Request{};
        return true;
    }

    void wait(comm::Request& r) override {
        if (!r.active()) return;
        std::unique_lock<std::mutex> lk(w_.mu);
        const int id = check_request(r, "wait");
        if (!op(id).launched) launch();
        w_.block(lk, world_rank(), who(), "wait(" + describe(id) + ")", [&] { return complete(id); });
        release(id);
        r = comm::Request{};
    }

    void progress() override {
        std::unique_lock<std::mutex> lk(w_.mu);
        launch();
        if (w_.failed) w_.released(who(), "progress()");
    }

    void flush() override {
        std::unique_lock<std::mutex> lk(w_.mu);
        launch();
        if (w_.failed) w_.released(who(), "flush()");
    }

    void all_to_all_v(const void* send, const std::size_t* send_bytes, const std::size_t* send_off, void* recv,
                      const std::size_t* recv_bytes, const std::size_t* recv_off) override {
        struct A {
            const char* send;
            const std::size_t *sb, *so;
            char* recv;
            const std::size_t *rb, *ro;
        };
        const A mine{static_cast<const char*>(send), send_bytes, send_off,
                     static_cast<char*>(recv),       recv_bytes, recv_off};
        const int P = size();
        collective(
            Kind::all_to_all_v, &mine,
            [&](const Args& all) {
                for (int j = 0; j < P; ++j)
                    for (int d = 0; d < P; ++d) {
                        const std::size_t s = at<A>(all, j).sb[d], e = at<A>(all, d).rb[j];
                        if (s == e) continue;
                        std::string msg = "all_to_all_v on comm ";
                        msg.append(std::to_string(g_->id)).append(": rank ").append(std::to_string(j));
                        msg.append(" sends ").append(std::to_string(s)).append(" bytes to rank ");
                        msg.append(std::to_string(d));
                        msg.append(", which expects ").append(std::to_string(e));
                        w_.misuse(msg);
                    }
            },
            [&](const Args& all) {
                for (int j = 0; j < P; ++j)
                    if (recv_bytes[j] > 0)
                        std::memcpy(mine.recv + recv_off[j], at<A>(all, j).send + at<A>(all, j).so[me_], recv_bytes[j]);
            });
        // As the MPI communicator counts: what goes to the other ranks.
        for (int d = 0; d < P; ++d)
            if (d != me_) bytes_sent_ += send_bytes[d];
    }

    void all_reduce_sum(double* data, std::size_t n) override {
        reduce(Kind::all_reduce_sum_f64, data, n, [](double a, double b) { return a + b; });
    }
    void all_reduce_sum(std::int64_t* data, std::size_t n) override {
        reduce(Kind::all_reduce_sum_i64, data, n, [](std::int64_t a, std::int64_t b) { return a + b; });
    }
    void all_reduce_max(double* data, std::size_t n) override {
        reduce(Kind::all_reduce_max, data, n, [](double a, double b) { return b > a ? b : a; });
    }

    void all_gather_v(const void* send, void* recv, const std::size_t* bytes, const std::size_t* offsets) override {
        struct A {
            const char* send;
            const std::size_t* bytes;
        };
        const A mine{static_cast<const char*>(send), bytes};
        const int P = size();
        collective(
            Kind::all_gather_v, &mine,
            [&](const Args& all) {
                for (int j = 1; j < P; ++j)
                    if (!std::equal(at<A>(all, 0).bytes, at<A>(all, 0).bytes + P, at<A>(all, j).bytes)) {
                        std::string msg = "all_gather_v on comm ";
                        msg.append(std::to_string(g_->id)).append(": ranks 0 and ").append(std::to_string(j));
                        msg.append(" disagree on the byte counts");
                        w_.misuse(msg);
                    }
            },
            [&](const Args& all) {
                for (int j = 0; j < P; ++j)
                    if (bytes[j] > 0) std::memcpy(static_cast<char*>(recv) + offsets[j], at<A>(all, j).send, bytes[j]);
            });
        bytes_sent_ += bytes[me_] * static_cast<std::size_t>(P - 1);  // its part, to every other rank
    }

    void broadcast(void* buf, std::size_t bytes, int root) override {
        check_peer(root, "broadcast root");
        struct A {
            char* buf;
            std::size_t bytes;
            int root;
        };
        const A mine{static_cast<char*>(buf), bytes, root};
        const int P = size();
        collective(
            Kind::broadcast, &mine,
            [&](const Args& all) {
                for (int j = 0; j < P; ++j)
                    if (at<A>(all, j).root != root || at<A>(all, j).bytes != bytes) {
                        std::string msg = "broadcast on comm ";
                        msg.append(std::to_string(g_->id)).append(": ranks disagree on the root or the size (rank ");
                        msg.append(std::to_string(j)).append(": root ").append(std::to_string(at<A>(all, j).root));
                        msg.append(", ").append(std::to_string(at<A>(all, j).bytes)).append(" bytes)");
                        w_.misuse(msg);
                    }
            },
            [&](const Args& all) {
                if (me_ != root && bytes > 0) std::memcpy(mine.buf, at<A>(all, root).buf, bytes);
            });
    }

    void barrier() override { collective(Kind::barrier, nullptr, nullptr, nullptr); }

    std::unique_ptr<comm::Communicator> split(int color, int key) override {
        struct A {
            int color, key;
            std::shared_ptr<Group> out;
            int rank = -1;
        };
        if (color < 0) {
            std::unique_lock<std::mutex> lk(w_.mu);
            w_.misuse(who() + ": split needs a color >= 0, got " + std::to_string(color));
        }
        A mine{color, key, nullptr};
        const int P = size();
        // The last rank to arrive forms every group, under the lock, and writes each member's result.
        collective(
            Kind::split, &mine,
            [&](const Args& all) {
                std::map<int, std::vector<std::pair<int, int>>> by_color;  // color -> (key, old rank)
                for (int j = 0; j < P; ++j) by_color[at<A>(all, j).color].emplace_back(at<A>(all, j).key, j);
                for (auto& [c, members] : by_color) {
                    std::sort(members.begin(), members.end());
                    std::vector<int> world;
                    for (const auto& m : members) world.push_back(g_->world[static_cast<std::size_t>(m.second)]);
                    auto g = std::make_shared<Group>(w_.next_group++, std::move(world));
                    for (std::size_t i = 0; i < members.size(); ++i) {
                        A& a = *const_cast<A*>(static_cast<const A*>(all[static_cast<std::size_t>(members[i].second)]));
                        a.out = g;
                        a.rank = static_cast<int>(i);
                    }
                }
                ++w_.splits;
            },
            nullptr);
        return std::make_unique<FakeCommunicator>(w_, std::move(mine.out), mine.rank);
    }

    [[noreturn]] void abort(int code) override {
        std::unique_lock<std::mutex> lk(w_.mu);
        const std::string msg = who() + " called abort(" + std::to_string(code) + ")";
        w_.fail_locked(msg);
        throw FakeAbort(msg, code);
    }

private:
    template <class A>
    static const A& at(const Args& all, int j) {
        return *static_cast<const A*>(all[static_cast<std::size_t>(j)]);
    }

    Endpoint& ep() { return g_->ends[static_cast<std::size_t>(me_)]; }
    const Endpoint& ep() const { return g_->ends[static_cast<std::size_t>(me_)]; }
    Op& op(int id) { return ep().ops[static_cast<std::size_t>(id)]; }
    int world_rank() const { return g_->world[static_cast<std::size_t>(me_)]; }

    std::string who() const {
        std::string s = "rank ";
        s.append(std::to_string(me_)).append(" of comm ").append(std::to_string(g_->id));
        s.append(" (world rank ").append(std::to_string(world_rank())).append(")");
        return s;
    }

    std::string describe(int id) {
        const Op& o = op(id);
        std::string s = o.send ? "send to " : "receive from ";
        s.append(std::to_string(o.peer)).append(", tag ").append(std::to_string(o.tag)).append(", ");
        s.append(std::to_string(o.bytes)).append(" bytes, comm ").append(std::to_string(g_->id));
        return s;
    }

    // Lock not held.
    void check_peer(int peer, const char* what) {
        if (peer >= 0 && peer < size()) return;
        std::lock_guard<std::mutex> lk(w_.mu);
        w_.misuse(who() + ": " + what + " " + std::to_string(peer) + " is not a rank of a communicator of size " +
                  std::to_string(size()));
    }

    comm::Request post(bool send, void* buf, std::size_t bytes, int peer, int tag) {
        check_peer(peer, send ? "destination" : "source");
        std::unique_lock<std::mutex> lk(w_.mu);
        if (tag < 0) w_.misuse(who() + ": tags must be >= 0, got " + std::to_string(tag));
        if (bytes > 0 && buf == nullptr) w_.misuse(who() + ": a null buffer for " + std::to_string(bytes) + " bytes");
        if (w_.failed) w_.released(who(), send ? "isend" : "irecv");
        Endpoint& e = ep();
        std::size_t id = 0;
        while (id < e.ops.size() && e.ops[id].in_use) ++id;
        if (id == e.ops.size()) e.ops.emplace_back();
        Op& o = e.ops[id];
        o = Op{};
        o.send = send;
        o.src = buf;
        o.dst = buf;
        o.bytes = bytes;
        o.peer = peer;
        o.tag = tag;
        o.in_use = true;
        if (w_.batches == Batches::eager) {
            o.launched = true;
            w_.enqueue(*g_, me_, static_cast<int>(id));
            w_.changed();
            if (w_.failed) w_.released(who(), send ? "isend" : "irecv");
        } else {
            e.pending.push_back(static_cast<int>(id));
        }
        return comm::Request{static_cast<int>(id)};
    }

    // Launches the pending batch (lock held): it runs once the member's earlier batches are done.
    void launch() {
        Endpoint& e = ep();
        if (e.pending.empty()) return;
        const std::uint64_t id = e.next_batch++;
        Batch& b = e.batches[id];
        b.ops = e.pending;
        b.unmatched = b.unreleased = e.pending.size();
        for (int i : e.pending) {
            op(i).launched = true;
            op(i).batch = id;
        }
        e.pending.clear();
        e.queued.push_back(id);
        w_.activate(*g_, me_);
        w_.changed();
    }

    int check_request(const comm::Request& r, const char* what) {
        const auto id = static_cast<std::size_t>(r.id);
        if (id < ep().ops.size() && ep().ops[id].in_use) return r.id;
        w_.misuse(who() + ": " + what + " on request " + std::to_string(r.id) +
                  ", which this communicator does not have outstanding");
    }

    bool complete(int id) {
        const Op& o = op(id);
        if (w_.batches == Batches::eager) return o.matched;
        return o.launched && ep().batches.at(o.batch).unmatched == 0;
    }

    void release(int id) {
        Op& o = op(id);
        o.in_use = false;
        if (w_.batches == Batches::eager) return;
        const auto it = ep().batches.find(o.batch);
        if (--it->second.unreleased == 0) ep().batches.erase(it);
    }

    // A blocking collective: every member publishes `args`; the last to arrive runs on_all under the
    // lock (consistency checks, split's bookkeeping); then each member runs body on everyone's args
    // without the lock, and none leaves before all have run it, so the buffers it reads stay valid.
    void collective(Kind kind, const void* args, const std::function<void(const Args&)>& on_all,
                    const std::function<void(const Args&)>& body) {
        std::unique_lock<std::mutex> lk(w_.mu);
        launch();  // every collective launches the pending batch
        Group& g = *g_;
        const int P = g.size();
        const std::uint64_t round = ep().collectives++;
        std::string what = kind_name(kind);
        what.append(" #").append(std::to_string(round)).append(" on comm ").append(std::to_string(g.id));
        // A rank leaves a round only once it is over, so its next call finds the next round open.
        w_.block(lk, world_rank(), who(), what, [&] { return g.round == round; });
        g.args[static_cast<std::size_t>(me_)] = args;
        g.kinds[static_cast<std::size_t>(me_)] = kind;
        if (++g.arrived == P) {
            for (int j = 0; j < P; ++j)
                if (g.kinds[static_cast<std::size_t>(j)] != kind) {
                    std::string msg = "collective mismatch on comm ";
                    msg.append(std::to_string(g.id)).append(": rank ").append(std::to_string(me_)).append(" calls ");
                    msg.append(kind_name(kind)).append(", rank ").append(std::to_string(j)).append(" calls ");
                    msg.append(kind_name(g.kinds[static_cast<std::size_t>(j)]));
                    w_.misuse(msg);
                }
            if (on_all) on_all(g.args);
        }
        w_.changed();
        w_.block(lk, world_rank(), who(), what, [&] { return g.arrived == P; });
        const Args all = g.args;
        ++g.in_body;
        lk.unlock();
        if (body) body(all);
        lk.lock();
        --g.in_body;
        if (++g.departed == P) {
            g.arrived = g.departed = 0;
            ++g.round;
        }
        w_.changed();
        // After a failure the round may never end; leave once nobody still reads the buffers.
        w_.block(
            lk, world_rank(), who(), what, [&] { return g.round > round || (w_.failed && g.in_body == 0); }, false);
        if (g.round <= round) w_.released(who(), what);
    }

    // In place: each member's contribution is copied first, as the results overwrite the inputs while
    // other members may still read them.
    template <class T, class F>
    void reduce(Kind kind, T* data, std::size_t n, F&& f) {
        const std::vector<T> mine(data, data + n);
        const int P = size();
        collective(
            kind, &mine,
            [&](const Args& all) {
                for (int j = 0; j < P; ++j)
                    if (at<std::vector<T>>(all, j).size() != n) {
                        std::string msg = kind_name(kind);
                        msg.append(" on comm ").append(std::to_string(g_->id)).append(": rank ");
                        msg.append(std::to_string(j));
                        msg.append(" reduces ").append(std::to_string(at<std::vector<T>>(all, j).size()));
                        msg.append(" values, rank ").append(std::to_string(me_)).append(" ").append(std::to_string(n));
                        w_.misuse(msg);
                    }
            },
            [&](const Args& all) {
                // In rank order, so every rank (and every rerun) gets the same bits.
                for (std::size_t i = 0; i < n; ++i) {
                    T acc = at<std::vector<T>>(all, 0)[i];
                    for (int j = 1; j < P; ++j) acc = f(acc, at<std::vector<T>>(all, j)[i]);
                    data[i] = acc;
                }
            });
    }

    Impl& w_;
    std::shared_ptr<Group> g_;
    int me_;
};

}  // namespace

FakeWorld::FakeWorld(int size, Batches batches) {
    if (size < 1) throw FakeCommError("FakeWorld needs at least one rank, got " + std::to_string(size));
    impl_ = std::make_unique<Impl>(size, batches);
}

FakeWorld::~FakeWorld() = default;

int FakeWorld::size() const { return impl_->size; }
Batches FakeWorld::batches() const { return impl_->batches; }

std::unique_ptr<comm::Communicator> FakeWorld::communicator(int rank) {
    std::lock_guard<std::mutex> lk(impl_->mu);
    if (rank < 0 || rank >= impl_->size || impl_->handed_out[static_cast<std::size_t>(rank)])
        throw FakeCommError("FakeWorld::communicator(" + std::to_string(rank) + "): not a rank, or handed out already");
    impl_->handed_out[static_cast<std::size_t>(rank)] = 1;
    return std::make_unique<FakeCommunicator>(*impl_, impl_->world_group, rank);
}

std::int64_t FakeWorld::splits() const {
    std::lock_guard<std::mutex> lk(impl_->mu);
    return impl_->splits;
}

bool FakeWorld::failed() const {
    std::lock_guard<std::mutex> lk(impl_->mu);
    return impl_->failed;
}

std::string FakeWorld::failure() const {
    std::lock_guard<std::mutex> lk(impl_->mu);
    return impl_->why;
}

void FakeWorld::fail(const std::string& why) {
    std::lock_guard<std::mutex> lk(impl_->mu);
    impl_->fail_locked(why);
}

void FakeWorld::finished(int rank) {
    std::lock_guard<std::mutex> lk(impl_->mu);
    Impl& w = *impl_;
    if (rank < 0 || rank >= w.size || w.done[static_cast<std::size_t>(rank)]) return;
    w.done[static_cast<std::size_t>(rank)] = 1;
    --w.live;
    // The ranks that wait have all seen the current state: with this one gone nobody can change it.
    if (w.live > 0 && w.seen_current == w.live) {
        std::string msg = "deadlock: the ranks still running wait for ranks that have finished (";
        msg.append(w.report()).append(")");
        w.fail_locked(msg);
    }
}

void run_ranks(FakeWorld& world, const std::function<void(comm::Communicator&)>& fn) {
    const int P = world.size();
    std::mutex mu;
    std::exception_ptr first_own, first_released;
    std::vector<std::thread> threads;
    threads.reserve(static_cast<std::size_t>(P));
    for (int r = 0; r < P; ++r)
        threads.emplace_back([&, r] {
            try {
                const std::unique_ptr<comm::Communicator> comm = world.communicator(r);
                fn(*comm);
            } catch (const FakeWorldFailed&) {
                std::lock_guard<std::mutex> lk(mu);
                if (!first_released) first_released = std::current_exception();
            } catch (const std::exception& e) {
                std::string why = "rank ";
                why.append(std::to_string(r)).append(" threw: ").append(e.what());
                world.fail(why);
                std::lock_guard<std::mutex> lk(mu);
                if (!first_own) first_own = std::current_exception();
            } catch (...) {
                world.fail("rank " + std::to_string(r) + " threw something that is not a std::exception");
                std::lock_guard<std::mutex> lk(mu);
                if (!first_own) first_own = std::current_exception();
            }
            world.finished(r);
        });
    for (std::thread& t : threads) t.join();
    if (first_own) std::rethrow_exception(first_own);
    if (first_released) std::rethrow_exception(first_released);
    if (world.failed()) throw FakeWorldFailed("the world failed: " + world.failure());
}

void run_ranks(int P, const std::function<void(comm::Communicator&)>& fn, Batches batches) {
    FakeWorld world(P, batches);
    run_ranks(world, fn);
}

}  // namespace longattn::test
