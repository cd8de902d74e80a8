// The job of longattn-bench from its options' values (options.cpp reads them): the text options read
// into their sections, and the checks of one option against another and, once the rank count is known,
// against the ranks. Every failure is an Error naming the option.
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <sstream>
#include <tuple>

#include "bench/bench.hpp"
#include "bench/npy.hpp"
#include "bench/option_values.hpp"
#include "bench/parse.hpp"
#include "kernels/backend.hpp"
#include "longattn/cost_model.hpp"
#include "longattn/cpu_isa.hpp"
#include "longattn/error.hpp"

namespace longattn::bench {

const char* mode_name(Mode m) {
    return m == Mode::fwd       ? "fwd"
           : m == Mode::bwd     ? "bwd"
           : m == Mode::fwd_bwd ? "fwd+bwd"
           : m == Mode::decode  ? "decode"
           : m == Mode::calibrate ? "calibrate"
                                  : "predict";
}

namespace {

std::string show_number(double x) {
    std::ostringstream os;
    os.precision(12);
    os << x;
    return os.str();
}

// --doc-dist uniform:MIN,MAX | exp:MEAN | lognormal:MEAN,SIGMA
DocSpec parse_doc_dist(const std::string& s) {
    const char* key = "doc-dist";
    const std::string form = "uniform:MIN,MAX, exp:MEAN or lognormal:MEAN,SIGMA";
    const auto colon = s.find(':');
    require(colon != std::string::npos, key, "expected ", form, ", got '", visible(s), "'");
    const std::string kind = s.substr(0, colon), args = s.substr(colon + 1);
    std::vector<std::string> parts;
    std::stringstream ss(args);
    std::string item;
    while (std::getline(ss, item, ',')) parts.push_back(item);
    DocSpec d;
    if (kind == "uniform") {
        require(parts.size() == 2, key, "expected uniform:MIN,MAX, got '", visible(s), "'");
        d.kind = DocSpec::Kind::uniform;
        d.a = static_cast<double>(parse_size(parts[0], key));
        d.b = static_cast<double>(parse_size(parts[1], key));
        require(d.b >= d.a, key, "uniform:MIN,MAX needs MAX >= MIN, got '", visible(s), "'");
    } else if (kind == "exp") {
        require(parts.size() == 1, key, "expected exp:MEAN, got '", visible(s), "'");
        d.kind = DocSpec::Kind::exponential;
        d.a = static_cast<double>(parse_size(parts[0], key));
    } else if (kind == "lognormal") {
        require(parts.size() == 2, key, "expected lognormal:MEAN,SIGMA, got '", visible(s), "'");
        d.kind = DocSpec::Kind::lognormal;
        d.a = static_cast<double>(parse_size(parts[0], key));
        d.b = parse_number(parts[1], key, "SIGMA as a number in (0, 4]");
        require(d.b > 0 && d.b <= 4, key, "SIGMA must be in (0, 4], got ", d.b);
    } else {
        require(false, key, "unknown distribution '", visible(kind), "'; allowed: ", form);
    }
    return d;
}

std::vector<std::int64_t> read_lens_file(const std::string& path) {
    require_input_file(path, "doc-lens-file");
    std::ifstream f(path);
    require(f.good(), "doc-lens-file", "cannot open '", visible(path), "'");
    std::string text, line;
    while (std::getline(f, line))
        if (line.find('#') != std::string::npos) text += line.substr(0, line.find('#')) + " ";
        else text += line + " ";
    return parse_list(text, "doc-lens-file");
}

// Rows of 0/1 characters, one line per query block.
void read_block_mask(const std::string& path, PatternSpec& p) {
    require_input_file(path, "block-mask");
    std::ifstream f(path);
    require(f.good(), "block-mask", "cannot open '", visible(path), "'");
    std::string line;
    std::int64_t rows = 0, cols = -1;
    while (std::getline(f, line)) {
        if (line.empty() || line[0] == '#') continue;
        std::int64_t n = 0;
        for (char c : line) {
            if (c == ' ' || c == '\r') continue;
            require(c == '0' || c == '1', "block-mask", "'", visible(path), "' line ", rows + 1, ": only 0 and 1 are allowed, got '",
                    visible(std::string(1, c)), "'");
            p.block_mask.push_back(static_cast<std::uint8_t>(c == '1'));
            ++n;
        }
        require(cols < 0 || n == cols, "block-mask", "'", visible(path), "': every row needs ", cols, " entries; row ", rows + 1,
                " has ", n);
        cols = n;
        ++rows;
    }
    require(rows > 0 && cols > 0, "block-mask", "'", visible(path), "' holds no rows");
    p.block_mask_rows = rows;
    p.block_mask_cols = cols;
}

// Every tensor of a sequence of n tokens: its element count and byte size (at most 4 bytes an element)
// must fit 64 bits.
void require_tensors_fit(const Shape& s, std::int64_t n, const char* key) {
    const std::string what = std::to_string(s.batch) + " x " + std::to_string(n) + " tokens x " +
                             std::to_string(s.heads) + " heads x " + std::to_string(s.head_dim) + " dims x 4 bytes";
    const std::int64_t tokens = checked_mul(s.batch, n, key, what);
    checked_mul(checked_mul(checked_mul(tokens, s.heads, key, what), s.head_dim, key, what), 4, key, what);
}

// Seeds are read as signed integers: a negative one is an error, not a wrapped 2^64 - 1.
void read_seeds(const OptionValues& v, Job& j) {
    for (const auto& [text, key, out] : {std::tuple{&v.seed, "seed", &j.shape.seed},
                                         std::tuple{&v.doc_seed, "doc-seed", &j.pattern.docs.seed},
                                         std::tuple{&v.random_seed, "random-seed", &j.pattern.spec.random_seed}}) {
        const std::int64_t n = parse_int(*text, key, "a seed in [0, 2^63)");
        require(n >= 0, key, "must be in [0, 2^63), got ", n);
        *out = static_cast<std::uint64_t>(n);
    }
    j.exec.max_memory = v.max_memory == "0" ? 0 : static_cast<std::uint64_t>(parse_size(v.max_memory, "max-memory"));
}

// The options that name one of a few choices, and what a choice rules out: the CUDA kernels store
// bf16 or fp16 and have no unfused baseline, NCCL needs ranks and device tensors.
void read_choices(const OptionValues& v, Job& j) {
    if (v.mode == "fwd") j.sweep.mode = Mode::fwd;
    else if (v.mode == "bwd") j.sweep.mode = Mode::bwd;
    else if (v.mode == "fwd+bwd") j.sweep.mode = Mode::fwd_bwd;
    else if (v.mode == "decode") j.sweep.mode = Mode::decode;
    else if (v.mode == "calibrate") j.sweep.mode = Mode::calibrate;
    else if (v.mode == "predict") j.sweep.mode = Mode::predict;
    else require(false, "mode", "must be fwd, bwd, fwd+bwd, decode, calibrate or predict, got '", v.mode, "'");
    if (v.dtype == "fp32") j.shape.dtype = DType::f32;
    else if (v.dtype == "bf16") j.shape.dtype = DType::bf16;
    else if (v.dtype == "fp16") j.shape.dtype = DType::f16;
    else require(false, "dtype", "must be fp32, bf16 or fp16, got '", v.dtype, "'");
    require(v.device == "cpu" || v.device == "cuda", "device", "must be cpu or cuda, got '", v.device, "'");
    if (v.cpu_isa == "auto") {
        cpu_isa();  // refuses a LONGATTN_CPU_ISA that this build or this CPU cannot honour
    } else {
        std::string known;
        bool found = false;
        for (const std::string& i : cpu_isas()) {
            known.append(known.empty() ? "" : ", ").append(i);
            found = found || i == v.cpu_isa;
        }
        require(found, "cpu-isa", "must be auto or one of ", known, " (what this build holds and this CPU runs), got '",
                v.cpu_isa, "'");
    }
    j.exec.cpu_isa = v.cpu_isa;
    j.exec.device = v.device == "cuda" ? Device::cuda : Device::cpu;
    if (j.exec.device == Device::cuda) {
        require(kernels::backend(Device::cuda).built, "device", "this build has no CUDA kernels (configure with -DLONGATTN_WITH_CUDA=ON)");
        require(j.shape.dtype != DType::f32, "dtype", "the CUDA kernels store bf16 or fp16; choose -d bf16 or -d fp16");
        require(!j.checks.baseline, "baseline", "the unfused baseline runs on the CPU only");
        j.checks.peak = false;  // the FMA peak is the CPU's
    }
    require(v.comm == "mpi" || v.comm == "nccl", "comm", "must be mpi or nccl, got '", v.comm, "'");
    j.exec.nccl = v.comm == "nccl";
    require(v.scaling == "strong" || v.scaling == "weak", "scaling", "must be strong or weak, got '", v.scaling, "'");
    j.sweep.weak = v.scaling == "weak";
    require(v.progress == "auto" || v.progress == "on" || v.progress == "off", "progress", "must be auto, on or off, got ",
            quoted(v.progress));
    require(!v.quiet || v.progress != "on", "quiet", "contradicts --progress on");
    j.exec.progress = v.quiet || v.progress == "off" ? -1 : v.progress == "on" ? 1 : 0;
    const bool predict = j.sweep.mode == Mode::predict;
    j.exec.distributed = v.strategy != "kernel";
    j.exec.auto_strategy = v.strategy == "auto";
    if (j.exec.distributed && !j.exec.auto_strategy) j.exec.dist.strategy = parse_strategy(v.strategy);
    j.exec.cluster = v.cluster;
    require(!j.exec.auto_strategy || !v.cluster.empty(), "strategy",
            "auto picks what the cost model predicts fastest on a cluster: give --cluster (configs/clusters/)");
    require(j.exec.auto_check >= 0 && j.exec.auto_check <= 64, "auto-check", "must be 0 (off) to 64 choices, got ",
            j.exec.auto_check);
    require(j.exec.auto_check == 0 || (j.exec.auto_strategy && (j.sweep.mode == Mode::fwd || j.sweep.mode == Mode::bwd ||
                                                                 j.sweep.mode == Mode::fwd_bwd)),
            "auto-check", "times the cost model's choices against its pick: it belongs to --strategy auto under mpirun, "
            "--mode fwd, bwd or fwd+bwd");
    require(!predict || !v.cluster.empty(), "cluster", "--mode predict models a cluster: give --cluster (configs/clusters/)");
    require(v.cluster.empty() || j.exec.distributed || predict || j.sweep.mode == Mode::decode, "cluster",
            "belongs to a distributed --strategy (under mpirun), --mode decode or --mode predict");
    require(v.ranks >= 0 && v.ranks <= 4096, "ranks", "must be 0 (the cluster's devices) or 1 to 4096, got ", v.ranks);
    require(v.ranks == 0 || predict, "ranks", "belongs to --mode predict (under mpirun the ranks are mpirun's)");
    j.exec.model_ranks = v.ranks;
    if (!v.cluster.empty()) {  // its errors before anything runs
        const ClusterSpec cl = load_cluster(v.cluster);
        require(j.sweep.mode != Mode::decode || cl.memory_bandwidth > 0, "cluster", v.cluster,
                ": the decode model needs [device] memory_bandwidth_GBps");
        if (predict && v.ranks == 0) j.exec.model_ranks = cl.devices();
        require(j.exec.model_ranks <= 4096, "ranks", "the cluster's ", j.exec.model_ranks,
                " devices are more than the 4096 modelled: give --ranks");
    }
    require(!j.exec.nccl || (j.exec.distributed && j.exec.device == Device::cuda), "comm",
            "nccl needs a distributed strategy and --device cuda");
    j.exec.layout = parse_layout(v.layout);
    require(v.plan == "reuse" || v.plan == "per-call", "plan", "must be reuse or per-call, got ", quoted(v.plan));
    j.exec.reuse_plan = v.plan == "reuse";
}

// The counts' ranges, and the thread counts: a list to sweep in kernel mode, one value per rank otherwise.
void read_counts(const OptionValues& v, Job& j) {
    DistOptions& dist = j.exec.dist;
    require(dist.ulysses_degree >= 1, "ulysses-degree", "must be >= 1, got ", dist.ulysses_degree);
    require(dist.kv_head_chunk >= 0, "kv-head-chunk", "must be >= 0 (0 = all), got ", dist.kv_head_chunk);
    require(dist.progress_chunks >= 1, "progress-chunks", "must be >= 1, got ", dist.progress_chunks);
    require(std::isfinite(j.exec.timeout_s) && j.exec.timeout_s >= 0 && j.exec.timeout_s <= 1e6, "timeout",
            "must be 0 (no watchdog) or a number of seconds up to 1e6, got ", j.exec.timeout_s);
    require(std::isfinite(j.faults.sleep_s) && j.faults.sleep_s >= 0 && j.faults.sleep_s <= 1e4, "inject-sleep-s",
            "must be 0 to 1e4 seconds, got ", j.faults.sleep_s);
    require(std::isfinite(j.faults.stop_after_s) && j.faults.stop_after_s >= 0 && j.faults.stop_after_s <= 1e4,
            "inject-stop-after-s", "must be 0 to 1e4 seconds, got ", j.faults.stop_after_s);
    for (std::int64_t t : parse_list(v.threads, "threads", true)) {
        require(t <= 4096, "threads", "must be <= 4096, got ", t);
        j.sweep.threads.push_back(static_cast<int>(t));
    }
    require(!j.exec.distributed || j.sweep.threads.size() == 1, "threads",
            "takes one value per rank in distributed runs, got ", j.sweep.threads.size());
    dist.threads = j.sweep.threads.front();
    require(j.sweep.iters >= 1, "iters", "must be >= 1, got ", j.sweep.iters);
    require(j.sweep.warmup >= 0, "warmup", "must be >= 0, got ", j.sweep.warmup);
    require(j.checks.rows >= 1, "check-rows", "must be >= 1, got ", j.checks.rows);
    require(j.shape.batch >= 1, "batch", "must be >= 1, got ", j.shape.batch);
}

// --mode decode: its options, and what it does not take.
void read_decode(const OptionValues& v, Job& j) {
    Decode& d = j.decode;
    d.placement = parse_kv_placement(v.kv_placement);
    if (v.combine == "both") d.combines = {DecodeCombine::allgather, DecodeCombine::allreduce};
    else d.combines = {parse_decode_combine(v.combine)};
    require(v.fill == "synth" || v.fill == "prefill", "fill", "must be synth or prefill, got ", quoted(v.fill));
    d.prefill = v.fill == "prefill";
    if (j.sweep.mode != Mode::decode) {
        for (const char* o : {"steps", "new-tokens", "page-tokens", "kv-placement", "combine", "fill", "baselines"})
            require(!v.is_given(o), o, "belongs to --mode decode");
        return;
    }
    require(d.steps >= 1 && d.steps <= 1000000, "steps", "must be in [1, 1000000], got ", d.steps);
    require(d.new_tokens >= 1 && d.new_tokens <= 4096, "new-tokens", "must be in [1, 4096], got ", d.new_tokens);
    require(d.page_tokens >= 16 && d.page_tokens <= 65536 && d.page_tokens % 16 == 0, "page-tokens",
            "must be a multiple of 16 in [16, 65536], got ", d.page_tokens);
    require(j.sweep.warmup < d.steps, "warmup", "must be below --steps (", d.steps, ") in decode mode, got ",
            j.sweep.warmup);
    require(!d.prefill || j.exec.distributed, "fill", "prefill runs through a distributed --strategy; in kernel mode use synth");
    require(j.exec.device == Device::cpu, "device", "decode runs on the CPU (the CUDA decode kernel is not built yet)");
    require(!j.sweep.weak, "scaling", "decode lengths are whole sequences: drop --scaling weak");
    require(j.io.load_dir.empty() && j.io.save_dir.empty() && j.io.json_path.empty() && j.io.csv_path.empty(), "mode",
            "decode takes synthetic inputs and prints its table: drop --load, --save, --json and --csv");
    require(!j.exec.distributed || j.sweep.threads.size() == 1, "threads", "takes one value per rank in distributed runs");
}

// --load: the files fix the shape and the one sequence length; a shape given as well must agree.
void read_loaded_shape(const OptionValues& v, Job& j) {
    const std::string& dir = j.io.load_dir;
    Shape& s = j.shape;
    require(s.batch == 1, "batch", "must be 1 with --load (the files hold one sequence [S, H, D]), got ", s.batch);
    require(!v.is_given("minlen") && !v.is_given("maxlen") && !j.sweep.weak, "load",
            "the sequence length comes from the files; drop -b/-e/--scaling");
    for (const char* f : {"/q.npy", "/k.npy", "/v.npy"}) require_input_file(dir + f, "load");
    const NpyHeader q = npy_read_header(dir + "/q.npy", "load");
    const NpyHeader k = npy_read_header(dir + "/k.npy", "load");
    const NpyHeader vh = npy_read_header(dir + "/v.npy", "load");
    const auto dims = [](const NpyHeader& h) {
        std::string t = "[";
        for (std::size_t i = 0; i < h.shape.size(); ++i) t += (i ? ", " : "") + std::to_string(h.shape[i]);
        return t + "]";
    };
    require(q.shape.size() == 3 && k.shape.size() == 3 && vh.shape.size() == 3, "load",
            "q.npy, k.npy, v.npy must be 3-d [S, H, D]; got q ", dims(q), ", k ", dims(k), ", v ", dims(vh));
    require(vh.shape == k.shape, "load", "v.npy must have k.npy's shape; got k ", dims(k), ", v ", dims(vh));
    require(q.shape[0] == k.shape[0] && q.shape[2] == k.shape[2], "load",
            "q.npy and k.npy must share S and D; got q [", q.shape[0], ", ", q.shape[1], ", ", q.shape[2], "], k [",
            k.shape[0], ", ", k.shape[1], ", ", k.shape[2], "]");
    require(q.shape[0] > 0, "load", "the files hold an empty sequence");
    require(!v.is_given("heads") || s.heads == q.shape[1], "heads", "is ", s.heads, " but q.npy has ", q.shape[1]);
    require(!v.is_given("kv-heads") || s.kv_heads == k.shape[1], "kv-heads", "is ", s.kv_heads, " but k.npy has ",
            k.shape[1]);
    require(!v.is_given("head-dim") || s.head_dim == q.shape[2], "head-dim", "is ", s.head_dim, " but q.npy has ",
            q.shape[2]);
    s.heads = q.shape[1];
    s.kv_heads = k.shape[1];
    s.head_dim = q.shape[2];
    j.sweep.lengths = {q.shape[0]};
    if (::access((dir + "/dout.npy").c_str(), F_OK) == 0) {
        require_input_file(dir + "/dout.npy", "load");
        const NpyHeader d = npy_read_header(dir + "/dout.npy", "load");
        require(d.shape == q.shape, "load", "dout.npy must have q.npy's shape");
    }
}

// The sweep's lengths from -b, -e and -f. Each length is the previous one times the factor, rounded
// down; a factor that leaves a length unchanged (or a sweep of more than 64 lengths) is refused rather
// than run forever.
void sweep_lengths(const OptionValues& v, Sweep& s) {
    const std::int64_t lo = parse_size(v.minlen, "minlen");
    const std::int64_t hi = v.maxlen.empty() ? lo : parse_size(v.maxlen, "maxlen");
    const double factor = v.factor;
    require(hi >= lo, "maxlen", "must be >= minlen (", lo, "), got ", hi);
    require(std::isfinite(factor) && (factor > 1.0 || lo == hi), "factor", "must be a number > 1 for a sweep, got ",
            factor);
    for (std::int64_t L = lo; L <= hi;) {
        s.lengths.push_back(L);
        if (lo == hi) break;
        const double next = std::floor(static_cast<double>(L) * factor);
        // 2^63 and above cannot be converted back; hi near 2^63 rounds up to it as a double.
        if (!(next < 9223372036854775808.0) || static_cast<std::int64_t>(next) > hi) break;
        require(static_cast<std::int64_t>(next) > L, "factor", show_number(factor), " does not grow the length ", L,
                "; use a larger factor (the next length must be at least ", L + 1, ")");
        require(s.lengths.size() < 64, "factor", show_number(factor), " makes a sweep of more than 64 lengths from ",
                lo, " to ", hi);
        L = static_cast<std::int64_t>(next);
    }
}

// Heads (kv-heads 0: as many as heads) and head size, and every length's tensors within 64 bits.
void check_shape(Job& j) {
    Shape& s = j.shape;
    require(s.heads >= 1, "heads", "must be >= 1, got ", s.heads);
    if (s.kv_heads == 0) s.kv_heads = s.heads;
    require(s.kv_heads >= 1 && s.heads % s.kv_heads == 0, "kv-heads", "must divide heads (", s.heads, "), got ",
            s.kv_heads);
    require(s.head_dim >= 1 && s.head_dim <= 256, "head-dim", "must be in [1, 256], got ", s.head_dim);
    for (std::int64_t L : j.sweep.lengths) require_tensors_fit(s, L, j.io.load_dir.empty() ? "minlen" : "load");
}

// --window LEFT,RIGHT
void read_window(const std::string& window, PatternSpec& p) {
    const auto comma = window.find(',');
    const std::string form = "LEFT,RIGHT integers (-1 = unbounded)";
    require(comma != std::string::npos && window.find(',', comma + 1) == std::string::npos, "window", "expected ", form,
            ", got '", visible(window), "'");
    p.window = Window{parse_int(window.substr(0, comma), "window", form),
                      parse_int(window.substr(comma + 1), "window", form)};
}

// Documents: one way at a time; --doc-seed is kept whichever way is given.
void read_documents(const OptionValues& v, DocSpec& docs) {
    const int doc_ways = (docs.count != 0) + !v.doc_lens.empty() + !v.doc_lens_file.empty() + !v.doc_dist.empty();
    require(doc_ways <= 1, "docs", "give one of docs, doc-lens, doc-lens-file or doc-dist, not ", doc_ways);
    require(docs.count >= 0, "docs", "must be >= 0, got ", docs.count);
    if (docs.count > 0) docs.kind = DocSpec::Kind::equal;
    if (!v.doc_lens.empty() || !v.doc_lens_file.empty()) {
        const std::uint64_t seed = docs.seed;
        docs = DocSpec{};
        docs.seed = seed;
        docs.kind = DocSpec::Kind::lens;
        docs.lens = v.doc_lens.empty() ? read_lens_file(v.doc_lens_file) : parse_list(v.doc_lens, "doc-lens");
    }
    if (!v.doc_dist.empty()) {
        const std::uint64_t seed = docs.seed;
        docs = parse_doc_dist(v.doc_dist);
        docs.seed = seed;
    }
}

// The pattern's parts given as text: the window, the documents, further global positions, the block mask.
void read_pattern(const OptionValues& v, AttentionPattern& p) {
    if (!v.window.empty()) read_window(v.window, p.spec);
    read_documents(v, p.docs);
    if (!v.global_list.empty())
        for (std::int64_t g : parse_list(v.global_list, "global-list", true)) p.spec.global_list.push_back(g);
    if (!v.block_mask.empty()) read_block_mask(v.block_mask, p.spec);
}

// Outputs: checked now so that a bad path fails before any work, and nothing is half-written.
void check_outputs(const Job& j) {
    const Io& io = j.io;
    if (!io.save_dir.empty()) check_save_target(io.save_dir, "save");
    require(io.save_dir.empty() || j.shape.batch == 1, "save", "needs batch 1 (the files hold one sequence [S, H, D])");
    require(io.save_dir.empty() || j.sweep.lengths.size() == 1, "save", "needs one sequence length, not a sweep of ",
            j.sweep.lengths.size());
    require(io.save_dir.empty() || j.sweep.threads.size() == 1, "save", "needs one thread count, not a sweep");
    for (const auto& [path, name] : {std::pair{io.json_path, "json"}, std::pair{io.csv_path, "csv"}})
        if (!path.empty()) require_output_file(path, name);
}

}  // namespace

void complete_job(const OptionValues& v, Job& j) {
    read_seeds(v, j);
    read_choices(v, j);
    read_counts(v, j);
    read_decode(v, j);
    if (!j.io.load_dir.empty()) read_loaded_shape(v, j);
    else sweep_lengths(v, j.sweep);
    check_shape(j);
    read_pattern(v, j.pattern);
    require(j.sweep.mode != Mode::decode || j.pattern.docs.kind == DocSpec::Kind::none, "docs",
            "packed documents are not part of --mode decode (each sequence of the batch is one document)");
    check_outputs(j);
    PatternSpec probe = spec_for_length(j, j.sweep.lengths.back());  // validate the pattern before any work starts
    Pattern{probe};
}

void validate_for_ranks(const Job& job, int ranks) {
    const PatternSpec& p = job.pattern.spec;
    const DocSpec& docs = job.pattern.docs;
    const DistOptions& dist = job.exec.dist;
    if (job.sweep.weak)
        for (std::int64_t L : job.sweep.lengths)
            require_tensors_fit(job.shape,
                                checked_mul(L, ranks, "minlen",
                                            "weak scaling: " + std::to_string(L) + " tokens per rank x " +
                                                std::to_string(ranks) + " ranks"),
                                "minlen");
    const std::int64_t n = total_tokens(job, job.sweep.lengths.back(), ranks);
    // What is fixed in tokens must fit the shortest sequence of the sweep: nothing is clamped silently.
    const std::int64_t shortest = total_tokens(job, job.sweep.lengths.front(), ranks);
    require(docs.kind != DocSpec::Kind::equal || docs.count <= shortest, "docs", docs.count,
            " documents do not fit in ", shortest, " tokens (at most one per token)");
    if (docs.kind == DocSpec::Kind::lens)
        for (std::int64_t len : docs.lens)
            require(len <= shortest, "doc-lens", "a document of ", len,
                    " tokens does not fit in a sequence of ", shortest);
    require(p.global_first <= shortest, "global", "must be in [0, ", shortest, "] for a sequence of ", shortest,
            " tokens, got ", p.global_first);
    for (std::int64_t g : p.global_list)
        require(g < shortest, "global-list", "positions must be in [0, ", shortest, ") for a sequence of ", shortest,
                " tokens, got ", g);
    if (!p.block_mask.empty())
        for (std::int64_t L : job.sweep.lengths) {
            const std::int64_t nb = (total_tokens(job, L, ranks) + p.block - 1) / p.block;
            require(p.block_mask_rows == nb && p.block_mask_cols == nb, "block-mask", "is ", p.block_mask_rows, " x ",
                    p.block_mask_cols, " blocks; a sequence of ", total_tokens(job, L, ranks), " tokens in blocks of ",
                    p.block, " needs ", nb, " x ", nb);
        }
    if (p.window)
        for (std::int64_t w : {p.window->left, p.window->right})
            require(w >= -1 && w < n, "window", "each side must be -1 (unbounded) or in [0, ", n,
                    ") for sequences up to ", n, " tokens, got ", p.window->left, ",", p.window->right);
    if (job.sweep.mode == Mode::calibrate) {
        require(!job.exec.distributed && job.exec.device == Device::cpu, "mode",
                "calibrate measures the CPU kernels and the links between the ranks: drop --strategy and --device");
        require(job.io.json_path.empty() && job.io.csv_path.empty() && job.io.save_dir.empty() && job.io.load_dir.empty(),
                "mode", "calibrate prints a cluster file on synthetic inputs: drop --json, --csv, --save and --load");
    }

    require(job.exec.cluster.empty() || job.sweep.mode != Mode::decode || !job.decode.prefill, "cluster",
            "the decode model places the cache as the synthetic fill does: drop --fill prefill or --cluster");
    if (job.sweep.mode == Mode::predict) {
        require(job.exec.device == Device::cpu, "device", "--mode predict runs nothing (the cluster file describes the devices): drop --device");
        require(job.io.json_path.empty() && job.io.csv_path.empty() && job.io.save_dir.empty() && job.io.load_dir.empty(),
                "mode", "predict prints its table and runs nothing: drop --json, --csv, --save and --load");
    }
    require(job.exec.distributed || ranks == 1 || job.sweep.mode == Mode::calibrate || job.sweep.mode == Mode::predict, "strategy",
            "'kernel' runs in one process; under mpirun choose ring, ulysses, hybrid or allgather");
    if (job.exec.distributed && dist.strategy == StrategyKind::hybrid)
        require(ranks % dist.ulysses_degree == 0, "ulysses-degree", "must divide the number of ranks (", ranks,
                "), got ", dist.ulysses_degree);
    if (job.exec.distributed && dist.strategy == StrategyKind::allgather)
        require(dist.kv_head_chunk <= job.shape.kv_heads, "kv-head-chunk", "must be in [0, kv-heads = ",
                job.shape.kv_heads, "], got ", dist.kv_head_chunk);
}

PatternSpec spec_for_length(const Job& job, std::int64_t n) {
    PatternSpec s = job.pattern.spec;
    s.seq_len = n;
    s.doc_bounds = doc_bounds(job.pattern.docs, n);
    const auto heads = static_cast<float>(job.shape.heads);
    if (job.pattern.alibi)
        for (std::int64_t h = 0; h < job.shape.heads; ++h)
            s.alibi_slopes.push_back(std::exp2(-8.0f * static_cast<float>(h + 1) / heads));
    return s;
}

}  // namespace longattn::bench
