#pragma once
// longattn-bench: the job description shared by the option parser and the runners.
#include <cstdint>
#include <string>
#include <vector>

#include "longattn/distributed.hpp"
#include "longattn/dtype.hpp"
#include "longattn/error.hpp"
#include "longattn/kv_cache.hpp"
#include "longattn/layout.hpp"
#include "longattn/pattern.hpp"

namespace longattn::bench {

enum class Mode { fwd, bwd, fwd_bwd, decode, calibrate, predict };
const char* mode_name(Mode m);

// How packed documents are laid out over a sequence of any length.
struct DocSpec {
    enum class Kind { none, equal, lens, uniform, exponential, lognormal } kind = Kind::none;
    std::int64_t count = 0;              // equal: this many documents of near-equal length
    std::vector<std::int64_t> lens;      // lens: repeated to cover the sequence
    double a = 0, b = 0;                 // uniform [a, b]; exponential mean a; lognormal mean a, sigma b
    std::uint64_t seed = 1;              // of the drawn lengths (the same on every rank)
    std::string describe() const;
};
// cu_seqlens for a sequence of n tokens: 0 = b0 < b1 < ... = n; empty when kind is none.
std::vector<std::int64_t> doc_bounds(const DocSpec& d, std::int64_t n);

// The job comes in sections, one per concern; struct Job below holds one of each.

// What is timed: the direction, the sweep of sequence lengths and thread counts, how many runs.
struct Sweep {
    Mode mode = Mode::fwd;
    std::vector<std::int64_t> lengths;   // sequence lengths of the sweep (per rank when weak)
    bool weak = false;                   // weak scaling: lengths are tokens per rank
    std::vector<int> threads;            // thread counts of the sweep (0 = all)
    int iters = 5, warmup = 1;
};

// The tensors: their shape, storage type and the seed of the synthetic inputs.
struct Shape {
    std::int64_t batch = 1, heads = 4, kv_heads = 0, head_dim = 128;
    DType dtype = DType::f32;
    std::uint64_t seed = 1;
};

// Which pairs attend and how scores are biased; spec_for_length makes the PatternSpec of one length.
struct AttentionPattern {
    PatternSpec spec;                    // documents and seq_len are filled in per length
    bool alibi = false;                  // ALiBi slopes 2^(-8 (h+1) / heads)
    DocSpec docs;
};

// Where the kernels run: in one process or over the ranks of mpirun, on which device, over which link.
struct Execution {
    bool distributed = false;            // a strategy other than "kernel"
    bool auto_strategy = false;          // --strategy auto: dist and layout picked by the cost model
    std::string cluster;                 // the cost model's cluster file ("": no prediction)
    int model_ranks = 0;                 // --mode predict: the ranks modelled (0: the cluster's devices)
    int progress = 0;                    // progress lines: -1 never, 0 when stderr is a terminal, 1 always
    DistOptions dist;
    LayoutKind layout = LayoutKind::zigzag;
    bool per_rank = false;               // print every rank's kernel, wait, bytes and memory
    int auto_check = 0;                  // --strategy auto: time the model's first N choices too (0: no)
    Device device = Device::cpu;         // where the tensors live and the kernels run
    bool nccl = false;                   // the NCCL communicator instead of MPI (device cuda)
    bool reuse_plan = true;              // one Plan per length for every call (else one-shot calls)
    double timeout_s = 60;               // the watchdog's deadline on a silent rank (0: none)
    std::uint64_t max_memory = 0;        // bytes a rank may hold (0: what its node gives)
    std::string cpu_isa = "auto";        // the CPU kernels' instruction set (longattn/cpu_isa.hpp)
};

// What each run is compared with: the fp64 reference on sampled rows and, in kernel mode, the unfused
// baseline and the CPU's FMA peak.
struct Checks {
    bool enabled = true;                 // -c: check sampled rows against an fp64 reference
    int rows = 16;                       // sampled query rows (and key rows) per rank for -c
    bool baseline = false;               // kernel mode: also time the unfused GEMM-softmax-GEMM baseline
    bool peak = true;                    // kernel mode: measure this CPU's FMA peak first
};

// Inputs and outputs.
struct Io {
    std::string load_dir;                // q.npy, k.npy, v.npy [S, H, D] (and dout.npy) instead of synthetic inputs
    std::string save_dir;                // out.npy [S, H, D], lse.npy [H, S] (and dq/dk/dv.npy) in global order
    std::string json_path, csv_path;     // the table for scripts
    bool allow_nonfinite = false;        // let NaN/Inf in loaded inputs through (they propagate), and save them
};

// Fault injection for the tests.
struct Faults {
    int inject_failure = -1;             // this rank throws mid-run (the abort path)
    int inject_stop = -1;                // this rank stops itself (SIGSTOP) at the first timed iteration
    double stop_after_s = 0;             // ... that many seconds into it
    int inject_sleep = -1;               // this rank sleeps sleep_s at the first timed iteration (slow, alive)
    double sleep_s = 10;
    int save_kill = -1;                  // this rank kills itself (SIGKILL) in --save, one file written
    int publish_failure = -1;            // the outputs' publish fails at this step (0: the first file)
    bool corrupt = false;                // perturb one output element before the check (the check must fail)
};

// --mode decode: a cache of each sweep length (per sequence), then decode steps of a few new tokens.
struct Decode {
    int steps = 16;                      // decode steps (the first --warmup of them are not timed)
    int new_tokens = 1;                  // new tokens per sequence per step
    std::int64_t page_tokens = 64;       // slots per page of the KV cache
    KvPlacement placement = KvPlacement::round_robin;
    std::vector<DecodeCombine> combines{DecodeCombine::allgather};  // two: alternated step by step
    bool prefill = false;                // fill the cache by a prefill through --strategy (else synthetic)
    bool baselines = true;               // also time pass-Q and the cache gathered onto rank 0
};

// An error every rank throws alike (the job is refused, or failed, as a whole): rank 0 reports it and
// every rank exits with `code` (2: refused before it ran; 1: failed after), with no abort that could
// cut rank 0's report short.
class AgreedError : public Error {
public:
    explicit AgreedError(const std::string& what, int code = 2) : Error(what), code(code) {}
    int code;
};

// What parse_job makes of the command line and the config file, for the runners.
struct Job {
    Sweep sweep;
    Shape shape;
    AttentionPattern pattern;
    Execution exec;
    Checks checks;
    Io io;
    Faults faults;
    Decode decode;
    std::string command_line;            // as given, for the reports
};

// Parses argv (and --config); throws Error naming the option for bad input. help_text is filled when
// --help is given (and the returned job is not to be run).
Job parse_job(int argc, char** argv, std::string& help_text);
// Checks what depends on the rank count (degrees, shard files); throws Error naming the option.
void validate_for_ranks(const Job& job, int ranks);

// Sequence length of sweep entry L on `ranks` ranks.
inline std::int64_t total_tokens(const Job& job, std::int64_t L, int ranks) { return job.sweep.weak ? L * ranks : L; }
// The job's pattern for a sequence of n tokens (documents laid out, random part sized, ALiBi slopes).
PatternSpec spec_for_length(const Job& job, std::int64_t n);

// Single-process kernel benchmark; prints the table and returns 0 when every check passed.
int run_kernel_bench(const Job& job);
// --mode calibrate: prints a cluster file (longattn/cost_model.hpp) of this machine: the kernels' forward
// and backward throughput at the job's largest length, shape, pattern and threads, measured on rank 0, and
// (comm with 2 ranks or more) the latency and bandwidth between ranks 0 and 1 by ping-pong.
int run_calibrate(const Job& job, comm::Communicator* comm);
// STREAM's triad a = b + s c over arrays of `bytes` in all, best of 5, at `threads` threads: 24 bytes
// per element counted, as STREAM does. With comm, every rank at once (a barrier before each pass).
double triad_bytes_per_s(int threads, double bytes, comm::Communicator* comm = nullptr);
// --mode predict: in one process, nothing run, the cost model's time of the job on --ranks devices of the
// cluster file for every strategy (or the one --strategy names, on --layout), fastest first, per length.
int run_predict(const Job& job);

}  // namespace longattn::bench

namespace longattn::comm {
class Communicator;
}

namespace longattn::bench {
// Distributed benchmark under mpirun; the same return convention.
int run_dist_bench(const Job& job, comm::Communicator& comm);
// --mode decode, on one process (comm null: the kernel against a triad bandwidth) or over mpirun.
int run_decode_bench(const Job& job, comm::Communicator* comm);

}  // namespace longattn::bench
