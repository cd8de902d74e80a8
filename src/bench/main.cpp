// longattn-bench: attention benchmarks with a self-check (-c), configured from the command line and
// an INI file (the command line wins). Exit codes: 0 ok, 1 failed check or runtime error, 2 bad input.
#include <boost/program_options.hpp>
#include <cstdio>
#include <iostream>
#include <sstream>

#include "bench/bench.hpp"
#include "longattn/error.hpp"
#ifdef LONGATTN_HAVE_MPI
#include <mpi.h>

#include "comm/mpi/mpi_communicator.hpp"
#endif

namespace po = boost::program_options;
using namespace longattn;
using longattn::bench::Job;

namespace {

// "64K" -> 65536, "1M" -> 1048576.
std::int64_t parse_size(const std::string& s, const char* key) {
    require(!s.empty(), key, "is empty; expected a number with an optional K, M or G suffix");
    std::size_t used = 0;
    long long v = 0;
    try {
        v = std::stoll(s, &used);
    } catch (const std::exception&) {
        require(false, key, "expected a number with an optional K, M or G suffix, got '", s, "'");
    }
    std::int64_t mul = 1;
    const std::string suffix = s.substr(used);
    if (suffix == "K" || suffix == "k") mul = 1 << 10;
    else if (suffix == "M" || suffix == "m") mul = 1 << 20;
    else if (suffix == "G" || suffix == "g") mul = 1 << 30;
    else require(suffix.empty(), key, "unknown suffix '", suffix, "' in '", s, "'; allowed: K, M, G");
    require(v > 0, key, "must be > 0, got '", s, "'");
    return v * mul;
}

template <class T>
std::vector<T> parse_list(const std::string& s, const char* key) {
    std::vector<T> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) {
        if (item.empty()) continue;
        out.push_back(static_cast<T>(item == "0" ? 0 : parse_size(item, key)));
    }
    require(!out.empty(), key, "expected a comma-separated list of numbers, got '", s, "'");
    return out;
}

// Fills help_text (and returns a default job) when --help is given.
Job parse(int argc, char** argv, std::string& help_text) {
    std::string mode, dtype, window, doc_lens, threads, minlen, maxlen, config, strategy, layout;
    double factor = 2;
    Job j;
    po::options_description general("General");
    general.add_options()
        ("help,h", "print this help")
        ("config", po::value(&config), "INI file with any of these options (keys as the long names)")
        ("mode", po::value(&mode)->default_value("fwd"), "fwd | bwd | fwd+bwd")
        ("threads,t", po::value(&threads)->default_value("0"), "threads per rank, or a list to sweep (0 = all)");
    po::options_description sweep("Sweep (nccl-tests style)");
    sweep.add_options()
        ("minlen,b", po::value(&minlen)->default_value("8K"), "smallest sequence length (K/M suffixes)")
        ("maxlen,e", po::value(&maxlen)->default_value(""), "largest sequence length (default: minlen)")
        ("factor,f", po::value(&factor)->default_value(2.0), "multiplication factor between lengths")
        ("iters,n", po::value(&j.iters)->default_value(5), "timed iterations")
        ("warmup,w", po::value(&j.warmup)->default_value(1), "warmup iterations")
        ("check,c", po::value(&j.check)->default_value(true), "check sampled rows against an fp64 reference")
        ("check-rows", po::value(&j.check_rows)->default_value(16), "sampled rows per head for the check")
        ("dtype,d", po::value(&dtype)->default_value("fp32"), "storage type: fp32 | bf16 | fp16")
        ("baseline", po::value(&j.baseline)->default_value(false), "also time the unfused GEMM-softmax-GEMM baseline")
        ("peak", po::value(&j.peak)->default_value(true), "measure the FMA peak of this CPU first");
    po::options_description shape("Shape");
    shape.add_options()
        ("batch", po::value(&j.batch)->default_value(1), "batch size")
        ("heads", po::value(&j.heads)->default_value(4), "query heads")
        ("kv-heads", po::value(&j.kv_heads)->default_value(0), "key/value heads (0 = heads; GQA/MQA when fewer)")
        ("head-dim", po::value(&j.head_dim)->default_value(128), "head dimension (1..256)")
        ("seed", po::value(&j.seed)->default_value(1), "seed of the synthetic inputs");
    po::options_description dist("Distribution (under mpirun)");
    dist.add_options()
        ("strategy", po::value(&strategy)->default_value("kernel"),
         "kernel (single process) | ring | ulysses | hybrid | allgather")
        ("layout", po::value(&layout)->default_value("zigzag"), "contiguous | zigzag | striped")
        ("ulysses-degree", po::value(&j.dist.ulysses_degree)->default_value(1), "hybrid: ranks per Ulysses group")
        ("kv-head-chunk", po::value(&j.dist.kv_head_chunk)->default_value(0), "allgather: kv heads gathered at once (0 = all)")
        ("progress-chunks", po::value(&j.dist.progress_chunks)->default_value(4),
         "ring: kernel calls per step, with transfer progress between them")
        ("per-rank", po::value(&j.per_rank)->default_value(false), "print every rank's time, wait, bytes and memory");
    po::options_description pat("Pattern");
    pat.add_options()
        ("causal", po::value(&j.pattern.causal)->default_value(false), "causal mask")
        ("window", po::value(&window)->default_value(""), "sliding window LEFT,RIGHT (-1 = unbounded)")
        ("docs", po::value(&j.docs)->default_value(0), "pack this many equal documents")
        ("doc-lens", po::value(&doc_lens)->default_value(""), "document lengths, repeated to fill the sequence")
        ("global", po::value(&j.pattern.global_first)->default_value(0), "first N tokens are global")
        ("block", po::value(&j.pattern.block)->default_value(64), "block size of strided and random parts")
        ("stride", po::value(&j.pattern.stride)->default_value(0), "every s-th key block column (0 = off)")
        ("random", po::value(&j.pattern.random_blocks)->default_value(0), "random key blocks per query block")
        ("softcap", po::value(&j.pattern.softcap)->default_value(0.0f), "tanh softcap of scores (0 = off)");
    po::options_description hidden("Hidden");
    hidden.add_options()("inject-failure", po::value(&j.inject_failure)->default_value(-1),
                         "this rank throws while the others are inside a collective");
    po::options_description visible;
    visible.add(general).add(sweep).add(shape).add(dist).add(pat);
    po::options_description all;
    all.add(visible).add(hidden);

    po::variables_map vm;
    try {
        po::store(po::parse_command_line(argc, argv, all), vm);
        if (vm.count("config")) {
            const std::string file = vm["config"].as<std::string>();
            std::FILE* f = std::fopen(file.c_str(), "r");
            require(f != nullptr, "config", "cannot open '", file, "'");
            std::fclose(f);
            po::store(po::parse_config_file<char>(file.c_str(), all), vm);
        }
        po::notify(vm);
    } catch (const po::error& e) {
        throw Error(std::string("option: ") + e.what());
    }
    if (vm.count("help")) {
        std::ostringstream os;
        os << "usage: longattn-bench [options]   (under mpirun for the distributed strategies)\n" << visible << '\n';
        help_text = os.str();
        return j;
    }
    if (mode == "fwd") j.mode = bench::Mode::fwd;
    else if (mode == "bwd") j.mode = bench::Mode::bwd;
    else if (mode == "fwd+bwd") j.mode = bench::Mode::fwd_bwd;
    else require(false, "mode", "must be fwd, bwd or fwd+bwd, got '", mode, "'");
    if (dtype == "fp32") j.dtype = DType::f32;
    else if (dtype == "bf16") j.dtype = DType::bf16;
    else if (dtype == "fp16") j.dtype = DType::f16;
    else require(false, "dtype", "must be fp32, bf16 or fp16, got '", dtype, "'");

    const std::int64_t lo = parse_size(minlen, "minlen");
    const std::int64_t hi = maxlen.empty() ? lo : parse_size(maxlen, "maxlen");
    require(hi >= lo, "maxlen", "must be >= minlen (", lo, "), got ", hi);
    require(factor > 1.0 || lo == hi, "factor", "must be > 1 for a sweep, got ", factor);
    for (double L = static_cast<double>(lo); L <= static_cast<double>(hi) * (1 + 1e-9); L *= factor) {
        j.lengths.push_back(static_cast<std::int64_t>(L));
        if (lo == hi) break;
    }
    j.distributed = strategy != "kernel";
    if (j.distributed) j.dist.strategy = parse_strategy(strategy);
    j.layout = parse_layout(layout);
    require(j.dist.ulysses_degree >= 1, "ulysses-degree", "must be >= 1, got ", j.dist.ulysses_degree);
    require(j.dist.kv_head_chunk >= 0, "kv-head-chunk", "must be >= 0, got ", j.dist.kv_head_chunk);
    require(j.dist.progress_chunks >= 1, "progress-chunks", "must be >= 1, got ", j.dist.progress_chunks);
    j.threads.clear();
    for (std::int64_t t : parse_list<std::int64_t>(threads, "threads")) j.threads.push_back(static_cast<int>(t));
    require(!j.distributed || j.threads.size() == 1, "threads", "takes one value per rank in distributed runs");
    j.dist.threads = j.threads.front();
    require(j.iters >= 1, "iters", "must be >= 1, got ", j.iters);
    require(j.warmup >= 0, "warmup", "must be >= 0, got ", j.warmup);
    require(j.check_rows >= 1, "check-rows", "must be >= 1, got ", j.check_rows);
    require(j.batch >= 1, "batch", "must be >= 1, got ", j.batch);
    require(j.heads >= 1, "heads", "must be >= 1, got ", j.heads);
    if (j.kv_heads == 0) j.kv_heads = j.heads;
    require(j.kv_heads >= 1 && j.heads % j.kv_heads == 0, "kv-heads", "must divide heads (", j.heads, "), got ",
            j.kv_heads);
    require(j.head_dim >= 1 && j.head_dim <= 256, "head-dim", "must be in [1, 256], got ", j.head_dim);
    if (!window.empty()) {
        const auto w = std::string(window);
        const auto comma = w.find(',');
        require(comma != std::string::npos, "window", "expected LEFT,RIGHT, got '", w, "'");
        try {
            j.pattern.window = Window{std::stoll(w.substr(0, comma)), std::stoll(w.substr(comma + 1))};
        } catch (const std::exception&) {
            require(false, "window", "expected LEFT,RIGHT integers, got '", w, "'");
        }
    }
    require(j.docs >= 0, "docs", "must be >= 0, got ", j.docs);
    if (!doc_lens.empty()) j.doc_lens = parse_list<std::int64_t>(doc_lens, "doc-lens");
    require(j.docs == 0 || j.doc_lens.empty(), "docs", "give either docs or doc-lens, not both");
    PatternSpec probe = j.pattern;  // validate the pattern before any work starts
    probe.seq_len = j.lengths.back();
    Pattern{probe};
    return j;
}

}  // namespace

// Every rank parses the same arguments, so bad input fails everywhere alike (exit 2, message from
// rank 0). A failure after that may hit one rank only: it prints and aborts the whole job.
int main(int argc, char** argv) {
    int rank = 0, size = 1;
#ifdef LONGATTN_HAVE_MPI
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
#endif
    auto finish = [&](int rc) {
#ifdef LONGATTN_HAVE_MPI
        MPI_Finalize();
#endif
        return rc;
    };
    auto fail = [&](const char* kind, const char* what, int code) {
        std::fprintf(stderr, "longattn-bench: %s%s%s\n", size > 1 ? ("rank " + std::to_string(rank) + ": ").c_str() : "",
                     kind, what);
#ifdef LONGATTN_HAVE_MPI
        if (size > 1) MPI_Abort(MPI_COMM_WORLD, code);
#endif
        return code;
    };
    Job job;
    try {
        std::string help;
        job = parse(argc, argv, help);
        if (!help.empty()) {
            if (rank == 0) std::cout << help;
            return finish(0);
        }
        require(job.distributed || size == 1, "strategy",
                "'kernel' runs in one process; under mpirun choose ring, ulysses, hybrid or allgather");
    } catch (const Error& e) {
        if (rank == 0) std::fprintf(stderr, "longattn-bench: error: %s\n", e.what());
        return finish(2);
    }
    int rc = 0;
    try {
        if (!job.distributed) {
            rc = bench::run_kernel_bench(job);
        } else {
#ifdef LONGATTN_HAVE_MPI
            comm::MpiCommunicator comm(MPI_COMM_WORLD);
            rc = bench::run_dist_bench(job, comm);
#else
            throw Error("strategy: this build has no MPI (configure with -DLONGATTN_WITH_MPI=ON)");
#endif
        }
    } catch (const Error& e) {
        return finish(fail("error: ", e.what(), 2));
    } catch (const std::exception& e) {
        return finish(fail("runtime failure: ", e.what(), 1));
    }
    return finish(rc);
}
