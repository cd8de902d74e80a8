// Options of longattn-bench: the command line and an INI file (--config), the command line winning.
// In the INI file a key sits either in its section ([pattern] causal = true, i.e. pattern.causal) or
// at the top as the long option name (causal = true). Anything unknown, misspelt or in the wrong
// section is an error naming the key and what is allowed.
#include <unistd.h>

#include <boost/program_options.hpp>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>

#include "bench/bench.hpp"
#include "bench/mirror.hpp"
#include "bench/npy.hpp"
#include "longattn/error.hpp"

namespace po = boost::program_options;

namespace longattn::bench {

const char* mode_name(Mode m) { return m == Mode::fwd ? "fwd" : m == Mode::bwd ? "bwd" : "fwd+bwd"; }

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

// Comma- (or whitespace-) separated sizes; "0" allowed where zero_ok.
std::vector<std::int64_t> parse_list(const std::string& s, const char* key, bool zero_ok = false) {
    std::vector<std::int64_t> out;
    std::string norm = s;
    for (char& c : norm)
        if (c == ',' || c == '\n' || c == '\t' || c == '\r') c = ' ';
    std::stringstream ss(norm);
    std::string item;
    while (ss >> item) out.push_back(zero_ok && item == "0" ? 0 : parse_size(item, key));
    require(!out.empty(), key, "expected a comma-separated list of numbers, got '", s, "'");
    return out;
}

double parse_number(const std::string& s, const char* key, const std::string& form) {
    std::size_t used = 0;
    double v = 0;
    try {
        v = std::stod(s, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    require(used == s.size() && !s.empty() && std::isfinite(v), key, "expected ", form, ", got '", s, "'");
    return v;
}

// --doc-dist uniform:MIN,MAX | exp:MEAN | lognormal:MEAN,SIGMA
DocSpec parse_doc_dist(const std::string& s) {
    const char* key = "doc-dist";
    const std::string form = "uniform:MIN,MAX, exp:MEAN or lognormal:MEAN,SIGMA";
    const auto colon = s.find(':');
    require(colon != std::string::npos, key, "expected ", form, ", got '", s, "'");
    const std::string kind = s.substr(0, colon), args = s.substr(colon + 1);
    std::vector<std::string> parts;
    std::stringstream ss(args);
    std::string item;
    while (std::getline(ss, item, ',')) parts.push_back(item);
    DocSpec d;
    if (kind == "uniform") {
        require(parts.size() == 2, key, "expected uniform:MIN,MAX, got '", s, "'");
        d.kind = DocSpec::Kind::uniform;
        d.a = static_cast<double>(parse_size(parts[0], key));
        d.b = static_cast<double>(parse_size(parts[1], key));
        require(d.b >= d.a, key, "uniform:MIN,MAX needs MAX >= MIN, got '", s, "'");
    } else if (kind == "exp") {
        require(parts.size() == 1, key, "expected exp:MEAN, got '", s, "'");
        d.kind = DocSpec::Kind::exponential;
        d.a = static_cast<double>(parse_size(parts[0], key));
    } else if (kind == "lognormal") {
        require(parts.size() == 2, key, "expected lognormal:MEAN,SIGMA, got '", s, "'");
        d.kind = DocSpec::Kind::lognormal;
        d.a = static_cast<double>(parse_size(parts[0], key));
        d.b = parse_number(parts[1], key, "SIGMA as a number in (0, 4]");
        require(d.b > 0 && d.b <= 4, key, "SIGMA must be in (0, 4], got ", d.b);
    } else {
        require(false, key, "unknown distribution '", kind, "'; allowed: ", form);
    }
    return d;
}

std::vector<std::int64_t> read_lens_file(const std::string& path) {
    std::ifstream f(path);
    require(f.good(), "doc-lens-file", "cannot open '", path, "'");
    std::string text, line;
    while (std::getline(f, line))
        if (line.find('#') != std::string::npos) text += line.substr(0, line.find('#')) + " ";
        else text += line + " ";
    return parse_list(text, "doc-lens-file");
}

// Rows of 0/1 characters, one line per query block.
void read_block_mask(const std::string& path, PatternSpec& p) {
    std::ifstream f(path);
    require(f.good(), "block-mask", "cannot open '", path, "'");
    std::string line;
    std::int64_t rows = 0, cols = -1;
    while (std::getline(f, line)) {
        if (line.empty() || line[0] == '#') continue;
        std::int64_t n = 0;
        for (char c : line) {
            if (c == ' ' || c == '\r') continue;
            require(c == '0' || c == '1', "block-mask", "'", path, "' line ", rows + 1, ": only 0 and 1 are allowed, got '", c, "'");
            p.block_mask.push_back(static_cast<std::uint8_t>(c == '1'));
            ++n;
        }
        require(cols < 0 || n == cols, "block-mask", "'", path, "': every row needs ", cols, " entries; row ", rows + 1, " has ", n);
        cols = n;
        ++rows;
    }
    require(rows > 0 && cols > 0, "block-mask", "'", path, "' holds no rows");
    p.block_mask_rows = rows;
    p.block_mask_cols = cols;
}

bool writable_dir(const std::string& dir) { return ::access(dir.c_str(), W_OK | X_OK) == 0; }
std::string parent_of(const std::string& path) {
    const auto slash = path.find_last_of('/');
    return slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
}

// Loads the INI file into `vm`: keys "section.name" map to option "name" when its section matches.
void store_config(const std::string& file, const po::options_description& all,
                  const std::map<std::string, std::string>& section_of, po::variables_map& vm) {
    std::ifstream f(file);
    require(f.good(), "config", "cannot open '", file, "'");
    po::parsed_options parsed = po::parse_config_file(f, all, true);
    for (auto& o : parsed.options) {
        if (!o.unregistered) {
            require(section_of.count(o.string_key) != 0, "config", "'", file, "': '", o.string_key,
                    "' cannot be set from a config file");
            continue;
        }
        const std::string key = o.string_key;
        const auto dot = key.find('.');
        const std::string sec = dot == std::string::npos ? "" : key.substr(0, dot);
        const std::string name = dot == std::string::npos ? key : key.substr(dot + 1);
        const auto it = section_of.find(name);
        if (it != section_of.end() && it->second == sec) {
            o.string_key = name;
            o.unregistered = false;
            continue;
        }
        std::ostringstream allowed;
        for (const auto& [n, s] : section_of)
            if (s == sec) allowed << ' ' << n;
        const bool known_section = !allowed.str().empty();
        if (it != section_of.end())
            require(false, key.c_str(), "unknown key in config '", file, "'; '", name, "' belongs in section [",
                    it->second, "] (", it->second, ".", name, ")");
        require(false, key.c_str(), "unknown key in config '", file, "'; ",
                sec.empty()      ? "not an option of longattn-bench (see --help)"
                : !known_section ? "sections are [run], [sweep], [shape], [dist], [pattern], [io]"
                               : "allowed in [" + sec + "]:" + allowed.str());
    }
    po::store(parsed, vm);
}

}  // namespace

Job parse_job(int argc, char** argv, std::string& help_text) {
    std::string device, comm_name, mode, dtype, window, doc_lens, doc_lens_file, doc_dist, threads, minlen, maxlen, config, strategy,
        layout, global_list, block_mask, scaling;
    double factor = 2;
    Job j;
    // Section of every option, for the INI mapping.
    std::map<std::string, std::string> section_of;
    auto group = [&](const char* title, const char* section) {
        struct Adder {
            po::options_description desc;
            std::map<std::string, std::string>* sections;
            std::string section;
            Adder& operator()(const char* name, const po::value_semantic* v, const char* help) {
                std::string n = name;
                sections->emplace(n.substr(0, n.find(',')), section);
                desc.add_options()(name, v, help);
                return *this;
            }
        };
        return Adder{po::options_description(title), &section_of, section};
    };
    auto run = group("Run [run]", "run");
    run("mode", po::value(&mode)->default_value("fwd"), "fwd | bwd | fwd+bwd")
       ("device", po::value(&device)->default_value("cpu"), "cpu | cuda (the CUDA kernels; one GPU per rank by local rank)")
       ("threads,t", po::value(&threads)->default_value("0"), "threads per rank, or a list to sweep in kernel mode (0 = all)")
       ("seed", po::value(&j.seed)->default_value(1), "seed of the synthetic inputs");
    auto sweep = group("Sweep, nccl-tests style [sweep]", "sweep");
    sweep("minlen,b", po::value(&minlen)->default_value("8K"), "smallest sequence length (K/M/G suffixes)")
         ("maxlen,e", po::value(&maxlen)->default_value(""), "largest sequence length (default: minlen)")
         ("factor,f", po::value(&factor)->default_value(2.0), "multiplication factor between lengths")
         ("scaling", po::value(&scaling)->default_value("strong"),
          "strong: lengths are whole sequences | weak: lengths are tokens per rank")
         ("iters,n", po::value(&j.iters)->default_value(5), "timed iterations (the median is reported)")
         ("warmup,w", po::value(&j.warmup)->default_value(1), "warmup iterations")
         ("check,c", po::value(&j.check)->default_value(true), "check sampled rows against an fp64 reference")
         ("check-rows", po::value(&j.check_rows)->default_value(16), "sampled query (and key) rows per rank for the check")
         ("baseline", po::value(&j.baseline)->default_value(false), "kernel mode: also time the unfused GEMM-softmax-GEMM baseline")
         ("peak", po::value(&j.peak)->default_value(true), "kernel mode: measure the FMA peak of this CPU first");
    auto shape = group("Shape [shape]", "shape");
    shape("batch", po::value(&j.batch)->default_value(1), "batch size")
         ("heads", po::value(&j.heads)->default_value(4), "query heads")
         ("kv-heads", po::value(&j.kv_heads)->default_value(0), "key/value heads (0 = heads; GQA/MQA when fewer)")
         ("head-dim", po::value(&j.head_dim)->default_value(128), "head dimension (1..256)")
         ("dtype,d", po::value(&dtype)->default_value("fp32"), "storage type: fp32 | bf16 | fp16");
    auto dist = group("Distribution, under mpirun [dist]", "dist");
    dist("strategy", po::value(&strategy)->default_value("kernel"),
         "kernel (single process) | ring | ulysses | hybrid | allgather")
        ("layout", po::value(&layout)->default_value("zigzag"), "contiguous | zigzag | striped")
        ("comm", po::value(&comm_name)->default_value("mpi"), "mpi | nccl (with --device cuda)")
        ("ulysses-degree", po::value(&j.dist.ulysses_degree)->default_value(1), "hybrid: ranks per Ulysses group (divides the rank count)")
        ("kv-head-chunk", po::value(&j.dist.kv_head_chunk)->default_value(0), "allgather: kv heads gathered at once (0 = all)")
        ("progress-chunks", po::value(&j.dist.progress_chunks)->default_value(4),
         "ring: kernel calls per step, with transfer progress between them")
        ("per-rank", po::value(&j.per_rank)->default_value(false), "print every rank's time, wait, bytes and memory");
    auto pat = group("Pattern [pattern]", "pattern");
    pat("causal", po::value(&j.pattern.causal)->default_value(false), "causal mask")
       ("window", po::value(&window)->default_value(""), "sliding window LEFT,RIGHT (-1 = unbounded)")
       ("docs", po::value(&j.docs.count)->default_value(0), "pack this many equal documents")
       ("doc-lens", po::value(&doc_lens)->default_value(""), "document lengths, repeated to fill the sequence")
       ("doc-lens-file", po::value(&doc_lens_file)->default_value(""), "file of document lengths (whitespace or commas)")
       ("doc-dist", po::value(&doc_dist)->default_value(""),
        "drawn document lengths: uniform:MIN,MAX | exp:MEAN | lognormal:MEAN,SIGMA")
       ("doc-seed", po::value(&j.docs.seed)->default_value(1), "seed of --doc-dist")
       ("global", po::value(&j.pattern.global_first)->default_value(0), "first N tokens are global")
       ("global-list", po::value(&global_list)->default_value(""), "further global token positions")
       ("block", po::value(&j.pattern.block)->default_value(64), "block size of the block-mask, strided and random parts")
       ("block-mask", po::value(&block_mask)->default_value(""), "file of 0/1 rows: allowed key blocks per query block")
       ("stride", po::value(&j.pattern.stride)->default_value(0), "every s-th key block column (0 = off)")
       ("random", po::value(&j.pattern.random_blocks)->default_value(0), "random key blocks per query block")
       ("random-seed", po::value(&j.pattern.random_seed)->default_value(0), "seed of the random blocks")
       ("softcap", po::value(&j.pattern.softcap)->default_value(0.0f), "tanh softcap of scores (0 = off)")
       ("scale", po::value(&j.pattern.scale)->default_value(0.0f), "softmax scale (0 = 1/sqrt(head-dim))")
       ("alibi", po::value(&j.alibi)->default_value(false), "ALiBi slopes 2^(-8(h+1)/heads)");
    auto io = group("Inputs and outputs [io]", "io");
    io("load", po::value(&j.load_dir)->default_value(""),
       "directory with q.npy, k.npy, v.npy [S, H, D] float32/float16 (dout.npy optional) instead of synthetic inputs")
      ("save", po::value(&j.save_dir)->default_value(""),
       "directory for out.npy [S, H, D] and lse.npy [H, S] (dq/dk/dv.npy with bwd), float32, global token order")
      ("json", po::value(&j.json_path)->default_value(""), "write the table as JSON to this file")
      ("csv", po::value(&j.csv_path)->default_value(""), "write the table as CSV to this file");
    po::options_description general("General");
    general.add_options()("help,h", "print this help")("config", po::value(&config), "INI file with any of the options below");
    po::options_description hidden("Hidden");
    hidden.add_options()
        ("inject-failure", po::value(&j.inject_failure)->default_value(-1), "this rank throws mid-run")
        ("corrupt", po::value(&j.corrupt)->default_value(false), "perturb one output element before the check");
    po::options_description visible;
    visible.add(general).add(run.desc).add(sweep.desc).add(shape.desc).add(dist.desc).add(pat.desc).add(io.desc);
    po::options_description all;
    all.add(visible).add(hidden);

    po::variables_map vm;
    try {
        po::store(po::parse_command_line(argc, argv, all), vm);
        if (vm.count("config")) store_config(vm["config"].as<std::string>(), all, section_of, vm);
        po::notify(vm);
    } catch (const po::error& e) {
        throw Error(std::string("option: ") + e.what());
    }
    if (vm.count("help")) {
        std::ostringstream os;
        os << "usage: longattn-bench [options]   (under mpirun for the distributed strategies)\n"
           << "In a --config INI file a key sits in its [section] or at the top: [pattern] causal = true\n"
           << visible << '\n';
        help_text = os.str();
        return j;
    }
    for (int i = 0; i < argc; ++i) j.command_line += (i ? " " : "") + std::string(argv[i]);
    auto given = [&](const char* name) { return vm.count(name) && !vm[name].defaulted(); };

    if (mode == "fwd") j.mode = Mode::fwd;
    else if (mode == "bwd") j.mode = Mode::bwd;
    else if (mode == "fwd+bwd") j.mode = Mode::fwd_bwd;
    else require(false, "mode", "must be fwd, bwd or fwd+bwd, got '", mode, "'");
    if (dtype == "fp32") j.dtype = DType::f32;
    else if (dtype == "bf16") j.dtype = DType::bf16;
    else if (dtype == "fp16") j.dtype = DType::f16;
    else require(false, "dtype", "must be fp32, bf16 or fp16, got '", dtype, "'");
    require(device == "cpu" || device == "cuda", "device", "must be cpu or cuda, got '", device, "'");
    j.device = device == "cuda" ? Device::cuda : Device::cpu;
    if (j.device == Device::cuda) {
        require(cuda_built(), "device", "this build has no CUDA kernels (configure with -DLONGATTN_WITH_CUDA=ON)");
        require(j.dtype != DType::f32, "dtype", "the CUDA kernels store bf16 or fp16; choose -d bf16 or -d fp16");
        require(!j.baseline, "baseline", "the unfused baseline runs on the CPU only");
        j.peak = false;  // the FMA peak is the CPU's
    }
    require(comm_name == "mpi" || comm_name == "nccl", "comm", "must be mpi or nccl, got '", comm_name, "'");
    j.nccl = comm_name == "nccl";
    require(scaling == "strong" || scaling == "weak", "scaling", "must be strong or weak, got '", scaling, "'");
    j.weak = scaling == "weak";

    j.distributed = strategy != "kernel";
    if (j.distributed) j.dist.strategy = parse_strategy(strategy);
    require(!j.nccl || (j.distributed && j.device == Device::cuda), "comm",
            "nccl needs a distributed strategy and --device cuda");
    j.layout = parse_layout(layout);
    require(j.dist.ulysses_degree >= 1, "ulysses-degree", "must be >= 1, got ", j.dist.ulysses_degree);
    require(j.dist.kv_head_chunk >= 0, "kv-head-chunk", "must be >= 0 (0 = all), got ", j.dist.kv_head_chunk);
    require(j.dist.progress_chunks >= 1, "progress-chunks", "must be >= 1, got ", j.dist.progress_chunks);
    for (std::int64_t t : parse_list(threads, "threads", true)) {
        require(t <= 4096, "threads", "must be <= 4096, got ", t);
        j.threads.push_back(static_cast<int>(t));
    }
    require(!j.distributed || j.threads.size() == 1, "threads", "takes one value per rank in distributed runs, got ",
            j.threads.size());
    j.dist.threads = j.threads.front();
    require(j.iters >= 1, "iters", "must be >= 1, got ", j.iters);
    require(j.warmup >= 0, "warmup", "must be >= 0, got ", j.warmup);
    require(j.check_rows >= 1, "check-rows", "must be >= 1, got ", j.check_rows);
    require(j.batch >= 1, "batch", "must be >= 1, got ", j.batch);

    // Inputs from files fix the shape and the length.
    if (!j.load_dir.empty()) {
        require(j.batch == 1, "batch", "must be 1 with --load (the files hold one sequence [S, H, D]), got ", j.batch);
        require(!given("minlen") && !given("maxlen") && !j.weak, "load", "the sequence length comes from the files; drop -b/-e/--scaling");
        const NpyHeader q = npy_read_header(j.load_dir + "/q.npy", "load");
        const NpyHeader k = npy_read_header(j.load_dir + "/k.npy", "load");
        const NpyHeader v = npy_read_header(j.load_dir + "/v.npy", "load");
        require(q.shape.size() == 3 && k.shape.size() == 3 && v.shape == k.shape, "load",
                "q.npy, k.npy, v.npy must be [S, H, D] with k and v alike; got q ", q.shape.size(), "-d, k ",
                k.shape.size(), "-d");
        require(q.shape[0] == k.shape[0] && q.shape[2] == k.shape[2], "load",
                "q.npy and k.npy must share S and D; got q [", q.shape[0], ", ", q.shape[1], ", ", q.shape[2], "], k [",
                k.shape[0], ", ", k.shape[1], ", ", k.shape[2], "]");
        require(q.shape[0] > 0, "load", "the files hold an empty sequence");
        require(!given("heads") || j.heads == q.shape[1], "heads", "is ", j.heads, " but q.npy has ", q.shape[1]);
        require(!given("kv-heads") || j.kv_heads == k.shape[1], "kv-heads", "is ", j.kv_heads, " but k.npy has ", k.shape[1]);
        require(!given("head-dim") || j.head_dim == q.shape[2], "head-dim", "is ", j.head_dim, " but q.npy has ", q.shape[2]);
        j.heads = q.shape[1];
        j.kv_heads = k.shape[1];
        j.head_dim = q.shape[2];
        j.lengths = {q.shape[0]};
        if (::access((j.load_dir + "/dout.npy").c_str(), F_OK) == 0) {
            const NpyHeader d = npy_read_header(j.load_dir + "/dout.npy", "load");
            require(d.shape == q.shape, "load", "dout.npy must have q.npy's shape");
        }
    } else {
        const std::int64_t lo = parse_size(minlen, "minlen");
        const std::int64_t hi = maxlen.empty() ? lo : parse_size(maxlen, "maxlen");
        require(hi >= lo, "maxlen", "must be >= minlen (", lo, "), got ", hi);
        require(factor > 1.0 || lo == hi, "factor", "must be > 1 for a sweep, got ", factor);
        for (double L = static_cast<double>(lo); L <= static_cast<double>(hi) * (1 + 1e-9); L *= factor) {
            j.lengths.push_back(static_cast<std::int64_t>(L));
            if (lo == hi) break;
        }
    }
    require(j.heads >= 1, "heads", "must be >= 1, got ", j.heads);
    if (j.kv_heads == 0) j.kv_heads = j.heads;
    require(j.kv_heads >= 1 && j.heads % j.kv_heads == 0, "kv-heads", "must divide heads (", j.heads, "), got ",
            j.kv_heads);
    require(j.head_dim >= 1 && j.head_dim <= 256, "head-dim", "must be in [1, 256], got ", j.head_dim);

    if (!window.empty()) {
        const auto comma = window.find(',');
        require(comma != std::string::npos, "window", "expected LEFT,RIGHT (-1 = unbounded), got '", window, "'");
        try {
            j.pattern.window = Window{std::stoll(window.substr(0, comma)), std::stoll(window.substr(comma + 1))};
        } catch (const std::exception&) {
            require(false, "window", "expected LEFT,RIGHT integers (-1 = unbounded), got '", window, "'");
        }
    }
    // Documents: one way at a time.
    const int doc_ways = (j.docs.count != 0) + !doc_lens.empty() + !doc_lens_file.empty() + !doc_dist.empty();
    require(doc_ways <= 1, "docs", "give one of docs, doc-lens, doc-lens-file or doc-dist, not ", doc_ways);
    require(j.docs.count >= 0, "docs", "must be >= 0, got ", j.docs.count);
    if (j.docs.count > 0) j.docs.kind = DocSpec::Kind::equal;
    if (!doc_lens.empty() || !doc_lens_file.empty()) {
        const std::uint64_t seed = j.docs.seed;
        j.docs = DocSpec{};
        j.docs.seed = seed;
        j.docs.kind = DocSpec::Kind::lens;
        j.docs.lens = doc_lens.empty() ? read_lens_file(doc_lens_file) : parse_list(doc_lens, "doc-lens");
    }
    if (!doc_dist.empty()) {
        const std::uint64_t seed = j.docs.seed;
        j.docs = parse_doc_dist(doc_dist);
        j.docs.seed = seed;
    }
    if (!global_list.empty())
        for (std::int64_t g : parse_list(global_list, "global-list", true)) j.pattern.global_list.push_back(g);
    if (!block_mask.empty()) read_block_mask(block_mask, j.pattern);

    // Outputs: checked now so that a bad path fails before any work, and nothing is half-written.
    require(j.save_dir.empty() || writable_dir(j.save_dir), "save", "'", j.save_dir, "' is not a writable directory");
    require(j.save_dir.empty() || j.batch == 1, "save", "needs batch 1 (the files hold one sequence [S, H, D])");
    require(j.save_dir.empty() || j.lengths.size() == 1, "save", "needs one sequence length, not a sweep of ",
            j.lengths.size());
    require(j.save_dir.empty() || j.threads.size() == 1, "save", "needs one thread count, not a sweep");
    for (const auto& [path, name] : {std::pair{j.json_path, "json"}, std::pair{j.csv_path, "csv"}})
        require(path.empty() || writable_dir(parent_of(path)), name, "the directory of '", path, "' is not writable");

    PatternSpec probe = spec_for_length(j, j.lengths.back());  // validate the pattern before any work starts
    Pattern{probe};
    return j;
}

void validate_for_ranks(const Job& job, int ranks) {
    const std::int64_t n = total_tokens(job, job.lengths.back(), ranks);
    if (job.pattern.window)
        for (std::int64_t w : {job.pattern.window->left, job.pattern.window->right})
            require(w >= -1 && w < n, "window", "each side must be -1 (unbounded) or in [0, ", n,
                    ") for sequences up to ", n, " tokens, got ", job.pattern.window->left, ",", job.pattern.window->right);
    require(job.distributed || ranks == 1, "strategy",
            "'kernel' runs in one process; under mpirun choose ring, ulysses, hybrid or allgather");
    if (job.distributed && job.dist.strategy == StrategyKind::hybrid)
        require(ranks % job.dist.ulysses_degree == 0, "ulysses-degree", "must divide the number of ranks (", ranks,
                "), got ", job.dist.ulysses_degree);
    if (job.distributed && job.dist.strategy == StrategyKind::allgather)
        require(job.dist.kv_head_chunk <= job.kv_heads, "kv-head-chunk", "must be in [0, kv-heads = ", job.kv_heads,
                "], got ", job.dist.kv_head_chunk);
}

PatternSpec spec_for_length(const Job& job, std::int64_t n) {
    PatternSpec s = job.pattern;
    s.seq_len = n;
    s.doc_bounds = doc_bounds(job.docs, n);
    if (job.alibi)
        for (std::int64_t h = 0; h < job.heads; ++h)
            s.alibi_slopes.push_back(std::exp2(-8.0f * static_cast<float>(h + 1) / static_cast<float>(job.heads)));
    return s;
}

}  // namespace longattn::bench
