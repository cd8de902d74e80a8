#include "bench/outputs.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <sstream>
#include <stdexcept>

#include "bench/npy.hpp"
#include "bench/parse.hpp"
#include "bench/report.hpp"
#include "comm/communicator.hpp"
#include "longattn/error.hpp"

namespace longattn::bench {
namespace {

// Temporaries to remove on the way out. Plain arrays: the signal handler may only read them.
constexpr int kMaxTemps = 32;
struct Temp {
    char path[4096];
    bool dir;  // removed (rmdir) after every file
};
Temp g_temps[kMaxTemps];
volatile std::sig_atomic_t g_ntemps = 0;
char g_prefix[256] = "longattn-bench: ";
volatile std::sig_atomic_t g_report_term = 1;  // this process says why a SIGTERM ended it
std::mutex g_temps_mutex;

void remove_registered() {
    for (int pass = 0; pass < 2; ++pass)
        for (int i = 0; i < g_ntemps; ++i)
            if (g_temps[i].path[0] && g_temps[i].dir == (pass == 1)) {
                if (pass == 0) ::unlink(g_temps[i].path);
                else ::rmdir(g_temps[i].path);
            }
}

void write_stderr(const char* s) {
    const std::size_t n = std::strlen(s);
    (void)!::write(2, s, n);
}

extern "C" void cleanup_and_die(int sig) {
    const char* outputs = g_ntemps > 0 ? "; its temporary files are removed, no output is published\n" : "\n";
    if (sig == SIGINT) {
        write_stderr(g_prefix);
        write_stderr("interrupted (Ctrl-C)");
        write_stderr(outputs);
    } else if (g_report_term) {
        // mpirun turns a Ctrl-C into SIGTERM for every rank, as it does when a rank aborts the job.
        write_stderr(g_prefix);
        write_stderr("terminated (SIGTERM: the job was interrupted, e.g. Ctrl-C on mpirun, or another rank ended it)");
        write_stderr(outputs);
    }
    remove_registered();
    std::signal(sig, SIG_DFL);
    std::raise(sig);
}

void register_temp(const std::string& path, bool dir) {
    std::lock_guard<std::mutex> lock(g_temps_mutex);
    require(path.size() < sizeof(g_temps[0].path), "save", "path too long: '", path, "'");
    require(g_ntemps < kMaxTemps, "save", "too many temporary files");
    std::snprintf(g_temps[g_ntemps].path, sizeof(g_temps[0].path), "%s", path.c_str());
    g_temps[g_ntemps].dir = dir;
    g_ntemps = g_ntemps + 1;
}

void unregister_temps() {
    std::lock_guard<std::mutex> lock(g_temps_mutex);
    for (int i = 0; i < g_ntemps; ++i) g_temps[i].path[0] = '\0';
    g_ntemps = 0;
}

std::runtime_error sys_error(const std::string& what) { return std::runtime_error(what + ": " + std::strerror(errno)); }

std::string base_of(const std::string& p) {
    const std::size_t s = p.find_last_of('/');
    return s == std::string::npos ? p : p.substr(s + 1);
}
bool exists(const std::string& p) {
    struct stat st {};
    return ::lstat(p.c_str(), &st) == 0;
}

// The path with its directory made canonical (the directory exists; the last part may not).
std::string canonical(const std::string& p) {
    std::string path = p;
    while (path.size() > 1 && path.back() == '/') path.pop_back();
    char buf[PATH_MAX];
    if (::realpath(path.c_str(), buf) != nullptr) return buf;
    if (::realpath(parent_of(path).c_str(), buf) == nullptr) throw sys_error("cannot resolve '" + parent_of(path) + "'");
    return std::string(buf) + "/" + base_of(path);
}

// A directory of plain files (what a save writes) and the directory.
void remove_tree(const std::string& dir) {
    if (DIR* d = ::opendir(dir.c_str())) {
        while (const dirent* e = ::readdir(d))
            if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0)
                ::unlink((dir + "/" + e->d_name).c_str());
        ::closedir(d);
    }
    ::rmdir(dir.c_str());
}

// What earlier jobs left beside `target` (".NAME.longattn-*"): partial sets, parked old ones.
void remove_leftovers(const std::string& target) {
    const std::string dir = parent_of(target), prefix = std::string(".").append(base_of(target)).append(".longattn-");
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return;
    std::vector<std::string> found;
    while (const dirent* e = ::readdir(d))
        if (std::strncmp(e->d_name, prefix.c_str(), prefix.size()) == 0) found.push_back(dir + "/" + e->d_name);
    ::closedir(d);
    for (const std::string& f : found) {
        struct stat st {};
        if (::lstat(f.c_str(), &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) remove_tree(f);
        else ::unlink(f.c_str());
    }
}

void write_whole(const std::string& path, const std::string& text) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) throw sys_error("cannot create '" + path + "'");
    try {
        pwrite_all(fd, text.data(), text.size(), 0, path);
    } catch (...) {
        ::close(fd);
        throw;
    }
    if (::fsync(fd) != 0 || ::close(fd) != 0) throw sys_error("cannot write '" + path + "'");
}

}  // namespace

OutputSet::OutputSet(const Job& job, comm::Communicator* comm) : job_(job), comm_(comm) {
    root_ = comm == nullptr || comm->rank() == 0;
    const Io& io = job.io;
    if (io.save_dir.empty() && io.json_path.empty() && io.csv_path.empty()) return;
    char id[64] = {};
    if (root_)
        std::snprintf(id, sizeof(id), "%ld-%llx", static_cast<long>(::getpid()),
                      static_cast<unsigned long long>(std::chrono::system_clock::now().time_since_epoch().count()));
    if (comm) comm->broadcast(id, sizeof(id), 0);
    id_ = id;
    if (!io.save_dir.empty()) {
        dir_ = canonical(io.save_dir);
        staging_ = parent_of(dir_) + "/." + base_of(dir_) + ".longattn-partial-" + id_;
        old_ = parent_of(dir_) + "/." + base_of(dir_) + ".longattn-old-" + id_;
    }
    // Every rank registers every name, so whichever rank fails removes them all.
    for (const std::string& p : {io.json_path, io.csv_path}) {
        if (p.empty()) continue;
        const std::string target = canonical(p);
        if (!dir_.empty() && parent_of(target) == dir_) {
            files_.push_back({base_of(target), {}});  // inside the --save directory: part of it
            texts_.push_back({target, staging_ + "/" + base_of(target), ""});
            continue;
        }
        const std::string hidden = parent_of(target) + "/." + base_of(target) + ".longattn-";
        texts_.push_back({target, hidden + "partial-" + id_, hidden + "old-" + id_});
        register_temp(texts_.back().staged, false);
    }
    if (!dir_.empty()) {
        for (const char* f : {"out.npy", "lse.npy", "dq.npy", "dk.npy", "dv.npy", "manifest.json"})
            register_temp(staging_ + "/" + f, false);
        for (const Text& t : texts_)
            if (t.backup.empty()) register_temp(t.staged, false);
        register_temp(staging_, true);
    }
    if (root_) {
        if (!dir_.empty()) remove_leftovers(dir_);
        for (const Text& t : texts_)
            if (!t.backup.empty()) remove_leftovers(t.target);
        if (!dir_.empty() && ::mkdir(staging_.c_str(), 0755) != 0) throw sys_error("save: cannot create '" + staging_ + "'");
    }
    if (comm) comm->barrier();
}

OutputSet::~OutputSet() {
    if (published_ || id_.empty()) return;
    remove_staged();
    unregister_temps();
}

// Any rank may: the names are the same on every rank, and removing twice is harmless.
void OutputSet::remove_staged() {
    for (const Text& t : texts_) ::unlink(t.staged.c_str());
    if (!staging_.empty()) remove_tree(staging_);
}

std::string OutputSet::staged(const std::string& name, const std::vector<std::int64_t>& shape) {
    require(!staging_.empty(), "save", "no --save directory");
    files_.push_back({name, shape});
    return staging_ + "/" + name;
}

void OutputSet::write_text(const std::string& path, const std::string& text) {
    const std::string target = canonical(path);
    for (const Text& t : texts_)
        if (t.target == target) {
            write_whole(t.staged, text);
            return;
        }
    throw std::logic_error("write_text: '" + path + "' is not an output of this job");
}

void OutputSet::publish() {
    if (id_.empty()) return;
    if (comm_) comm_->barrier();  // every rank is done writing
    int ok = 1;
    std::string why;
    if (root_) {
        try {
            publish_here();
        } catch (const std::exception& e) {
            ok = 0;
            why = e.what();
        }
    }
    if (comm_) comm_->broadcast(&ok, sizeof(ok), 0);
    if (!ok) {
        remove_staged();
        // Every rank knows: rank 0 reports its reason and all exit 1 together.
        throw AgreedError("save: " + (root_ ? why : std::string("rank 0 could not publish the outputs")) +
                              "; nothing is published, the old files are as they were",
                          1);
    }
    published_ = true;
    unregister_temps();
}

void OutputSet::publish_here() {
    if (!dir_.empty()) {
        std::ostringstream m;
        m << "{\n  \"longattn_output_set\": 1,\n  \"job\": " << json_string(id_)
          << ",\n  \"command\": " << json_string(job_.command_line) << ",\n  \"files\": {";
        for (std::size_t i = 0; i < files_.size(); ++i) {
            m << (i ? ",\n    " : "\n    ") << json_string(files_[i].first) << ": [";
            for (std::size_t d = 0; d < files_[i].second.size(); ++d) m << (d ? ", " : "") << files_[i].second[d];
            m << "]";
        }
        m << "\n  }\n}\n";
        write_whole(staging_ + "/manifest.json", m.str());
    }
    // Steps in order; a failure undoes the ones done. --inject-publish-failure K fails step K.
    int step = 0;
    auto injected = [&] {
        if (job_.faults.publish_failure == step++) throw std::runtime_error("injected failure at publish step " + std::to_string(step - 1));
    };
    std::vector<std::pair<const Text*, bool>> done;  // (text, had an old file)
    auto undo = [&] {
        for (auto it = done.rbegin(); it != done.rend(); ++it) {
            if (it->second) (void)std::rename(it->first->backup.c_str(), it->first->target.c_str());
            else ::unlink(it->first->target.c_str());
        }
    };
    try {
        for (const Text& t : texts_) {
            if (t.backup.empty()) continue;  // inside the --save directory
            injected();
            const bool had = exists(t.target);
            if (had && ::link(t.target.c_str(), t.backup.c_str()) != 0) throw sys_error("cannot keep '" + t.target + "'");
            if (std::rename(t.staged.c_str(), t.target.c_str()) != 0) {
                const int e = errno;
                if (had) ::unlink(t.backup.c_str());
                errno = e;
                throw sys_error("cannot rename '" + t.staged + "' to '" + t.target + "'");
            }
            done.push_back({&t, had});
        }
        if (!dir_.empty()) {
            injected();
            if (!exists(dir_)) {
                if (std::rename(staging_.c_str(), dir_.c_str()) != 0) throw sys_error("cannot rename '" + staging_ + "' to '" + dir_ + "'");
            } else if (::renameat2(AT_FDCWD, staging_.c_str(), AT_FDCWD, dir_.c_str(), RENAME_EXCHANGE) == 0) {
                remove_tree(staging_);  // the old set
            } else if (errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP) {
                // A file system without the exchange: park the old set, then move the new one in.
                if (std::rename(dir_.c_str(), old_.c_str()) != 0) throw sys_error("cannot move '" + dir_ + "' aside");
                if (std::rename(staging_.c_str(), dir_.c_str()) != 0) {
                    const int e = errno;
                    (void)std::rename(old_.c_str(), dir_.c_str());
                    errno = e;
                    throw sys_error("cannot rename '" + staging_ + "' to '" + dir_ + "'");
                }
                remove_tree(old_);
            } else {
                throw sys_error("cannot exchange '" + staging_ + "' with '" + dir_ + "'");
            }
        }
    } catch (...) {
        undo();
        throw;
    }
    for (const auto& [t, had] : done)
        if (had) ::unlink(t->backup.c_str());
}

void install_cleanup_handlers(const std::string& prefix, bool report_term) {
    std::snprintf(g_prefix, sizeof(g_prefix), "%s", prefix.c_str());
    g_report_term = report_term ? 1 : 0;
    std::signal(SIGTERM, cleanup_and_die);
    std::signal(SIGINT, cleanup_and_die);
}

void remove_temp_files() {
    std::lock_guard<std::mutex> lock(g_temps_mutex);
    remove_registered();
}

}  // namespace longattn::bench
