#include "comm/mpi/watchdog.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>

#include "longattn/error.hpp"

namespace longattn::comm {
namespace {

constexpr int kBeat = 1, kBye = 2;
constexpr int kHostChars = 64;

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string size_text(std::size_t bytes) {
    char b[32];
    if (bytes < 1048576) std::snprintf(b, sizeof(b), "%zu bytes", bytes);
    else std::snprintf(b, sizeof(b), "%.1f MiB", static_cast<double>(bytes) / 1048576.0);
    return b;
}

// Buffers a failing rank leaves to MPI, never freed but reachable (so not a leak to LeakSanitizer).
void keep_for_mpi(std::unique_ptr<std::int64_t[]> buf) {
    static std::mutex mu;
    static auto* kept = new std::vector<std::int64_t*>();
    std::lock_guard<std::mutex> lock(mu);
    kept->push_back(buf.release());
}

}  // namespace

Watchdog::Watchdog(MPI_Comm world, double timeout_s) : timeout_s_(timeout_s) {
    require(timeout_s > 0, "timeout", "the watchdog's deadline must be positive (0 turns the watchdog off)");
    int level = MPI_THREAD_SINGLE;
    MPI_Query_thread(&level);
    require(level >= MPI_THREAD_MULTIPLE, "timeout",
            "the watchdog needs MPI initialized with MPI_THREAD_MULTIPLE (MPI_Init_thread); this process has level ",
            level, " (a timeout of 0 runs without the watchdog)");
    MPI_Comm_dup(world, &comm_);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    // Several beats per deadline, so one late beat is never a verdict.
    period_s_ = std::clamp(timeout_s / 5, 0.01, 1.0);
    char host[kHostChars] = {};
    gethostname(host, kHostChars - 1);
    std::vector<char> all(static_cast<std::size_t>(size_) * kHostChars);
    MPI_Allgather(host, kHostChars, MPI_CHAR, all.data(), kHostChars, MPI_CHAR, comm_);
    for (int r = 0; r < size_; ++r) hosts_.emplace_back(all.data() + static_cast<std::size_t>(r) * kHostChars);
    thread_ = std::thread([this] { run(); });
}

Watchdog::~Watchdog() {
    {
        std::lock_guard<std::mutex> lock(stop_mu_);
        leaving_ = true;
        quiet_ = std::uncaught_exceptions() > 0;
    }
    stop_cv_.notify_all();
    thread_.join();
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
}

std::vector<int> Watchdog::world_ranks(MPI_Comm comm) const {
    MPI_Group mine, world;
    MPI_Comm_group(comm, &mine);
    MPI_Comm_group(comm_, &world);
    int n = 0;
    MPI_Group_size(mine, &n);
    std::vector<int> in(static_cast<std::size_t>(n)), out(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) in[static_cast<std::size_t>(i)] = i;
    MPI_Group_translate_ranks(mine, n, in.data(), world, out.data());
    MPI_Group_free(&mine);
    MPI_Group_free(&world);
    return out;
}

void Watchdog::begin_wait(const char* op, std::size_t bytes, int peer, int tag) {
    const double t = now_s();
    std::lock_guard<std::mutex> lock(mu_);
    wait_ = Wait{op, bytes, peer, tag, t};
}

void Watchdog::end_wait() {
    std::lock_guard<std::mutex> lock(mu_);
    wait_.op = nullptr;
}

void Watchdog::set_step(const char* phase, int step) {
    std::lock_guard<std::mutex> lock(mu_);
    phase_ = phase;
    step_ = step;
}

int Watchdog::add_abort_hook(std::function<void()> hook) {
    std::lock_guard<std::mutex> lock(mu_);
    hooks_[next_hook_] = std::move(hook);
    return next_hook_++;
}

void Watchdog::remove_hook(int id) {
    std::lock_guard<std::mutex> lock(mu_);
    hooks_.erase(id);
}

std::string Watchdog::describe_wait() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::string s;
    if (wait_.op == nullptr) {
        s = "this rank was not waiting on a transfer (it was computing or waiting outside the communicator)";
    } else {
        s.append("this rank was waiting for ").append(wait_.op);
        if (wait_.bytes > 0) s.append(" of ").append(size_text(wait_.bytes));
        if (wait_.peer >= 0) {
            s.append(std::string(wait_.op).find("send") != std::string::npos ? " to rank " : " from rank ");
            s.append(std::to_string(wait_.peer)).append(" (tag ").append(std::to_string(wait_.tag)).append(")");
        } else {
            s.append(" (a collective)");
        }
        char b[48];
        std::snprintf(b, sizeof(b), " for %.1f s", now_s() - wait_.since);
        s.append(b);
    }
    if (phase_ != nullptr) s.append(", in ").append(phase_);
    if (phase_ != nullptr && step_ >= 0) s.append(" step ").append(std::to_string(step_));
    return s;
}

void Watchdog::declare_stuck(double silent_s) {
    const int prev = (rank_ - 1 + size_) % size_;
    std::fprintf(stderr,
                 "longattn: rank %d (%s): watchdog: rank %d (%s) sent no heartbeat for %.1f s (deadline %.1f s): it is "
                 "stopped, wedged or cut off; %s; aborting the job\n",
                 rank_, hosts_[static_cast<std::size_t>(rank_)].c_str(), prev,
                 hosts_[static_cast<std::size_t>(prev)].c_str(), silent_s, timeout_s_, describe_wait().c_str());
    std::fflush(stderr);
    std::map<int, std::function<void()>> hooks;
    {
        std::lock_guard<std::mutex> lock(mu_);
        hooks = hooks_;
    }
    for (auto& [id, hook] : hooks) hook();
    MPI_Abort(comm_, kStuckExitCode);
    std::abort();
}

void Watchdog::run() {
    const int next = (rank_ + 1) % size_, prev = (rank_ - 1 + size_) % size_;
    // The messages' buffers; out changes only while no send of it is in flight.
    auto buf = std::make_unique<std::int64_t[]>(2);
    std::int64_t &in = buf[0], &out = buf[1];
    MPI_Request rx = MPI_REQUEST_NULL, tx = MPI_REQUEST_NULL;
    MPI_Irecv(&in, 1, MPI_INT64_T, prev, MPI_ANY_TAG, comm_, &rx);
    double heard = now_s(), sent = -1e300;
    bool got_bye = false, sent_bye = false;
    const auto tick = std::chrono::duration<double>(period_s_ / 4);
    for (;;) {
        bool leaving = false, quiet = false;
        {
            std::unique_lock<std::mutex> lock(stop_mu_);
            stop_cv_.wait_for(lock, tick, [&] { return leaving_; });
            leaving = leaving_;
            quiet = quiet_;
        }
        int flag = 0;
        if (quiet) {
            MPI_Cancel(&rx);
            MPI_Wait(&rx, MPI_STATUS_IGNORE);
            if (tx != MPI_REQUEST_NULL) {
                // A heartbeat still in flight: MPI delivers or drops it, and may read its buffer until
                // then, so the buffer outlives the thread (16 bytes, on a failing rank's way out).
                MPI_Request_free(&tx);
                keep_for_mpi(std::move(buf));
            }
            return;
        }
        if (tx != MPI_REQUEST_NULL) MPI_Test(&tx, &flag, MPI_STATUS_IGNORE);
        if (tx == MPI_REQUEST_NULL && !sent_bye) {
            const double t = now_s();
            if (leaving) {
                out = -1;
                MPI_Isend(&out, 1, MPI_INT64_T, next, kBye, comm_, &tx);
                sent_bye = true;
            } else if (t - sent >= period_s_) {
                ++out;
                MPI_Isend(&out, 1, MPI_INT64_T, next, kBeat, comm_, &tx);
                sent = t;
            }
        }
        // Messages from one sender arrive in order: the goodbye is the last one.
        while (!got_bye) {
            MPI_Status st;
            MPI_Test(&rx, &flag, &st);
            if (!flag) break;
            heard = now_s();
            if (st.MPI_TAG == kBye) got_bye = true;
            else MPI_Irecv(&in, 1, MPI_INT64_T, prev, MPI_ANY_TAG, comm_, &rx);
        }
        if (got_bye && sent_bye && tx == MPI_REQUEST_NULL) return;
        const double silent = now_s() - heard;
        if (!got_bye && silent > timeout_s_) declare_stuck(silent);
    }
}

}  // namespace longattn::comm
