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
#include <tuple>

#include "bench/bench.hpp"
#include "bench/mirror.hpp"
#include "bench/npy.hpp"
#include "bench/parse.hpp"
#include "longattn/error.hpp"

namespace po = boost::program_options;

namespace longattn::bench {

const char* mode_name(Mode m) { return m == Mode::fwd ? "fwd" : m == Mode::bwd ? "bwd" : "fwd+bwd"; }

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
    const std::string what = std::to_string(s.batch) + " x " + std::to_string(n) + " tokens x " + std::to_string(s.heads) +
                             " heads x " + std::to_string(s.head_dim) + " dims x 4 bytes";
    checked_mul(checked_mul(checked_mul(checked_mul(s.batch, n, key, what), s.heads, key, what), s.head_dim, key, what), 4,
                key, what);
}

// Boost.Program_options fills its messages by replacing %name% tokens in a loop, which never ends when
// the user's text holds such a token: a %name% (letters and '_' between two '%') outside a comment is
// refused before the parser sees it.
void refuse_placeholders(const std::string& text, const char* key) {
    std::size_t line = 0;
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] == '\n') line = i + 1;
        if (text[i] != '%') continue;
        const std::size_t first = text.find_first_not_of(" \t", line);
        if (first != std::string::npos && text[first] == '#') continue;  // a comment line
        std::size_t j = i + 1;
        while (j < text.size() && ((text[j] >= 'a' && text[j] <= 'z') || text[j] == '_')) ++j;
        if (j > i + 1 && j < text.size() && text[j] == '%')
            require(false, key, "'%name%' tokens are not allowed in options or config files, got ", quoted(text.substr(i, j + 1 - i)));
    }
}

// Loads the INI file into `vm`: keys "section.name" map to option "name" when its section matches.
void store_config(const std::string& file, const po::options_description& all,
                  const std::map<std::string, std::string>& section_of, po::variables_map& vm) {
    require_input_file(file, "config");
    std::ifstream in(file);
    require(in.good(), "config", "cannot open '", visible(file), "'");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    refuse_placeholders(text, "config");
    if (text.compare(0, 3, "\xEF\xBB\xBF") == 0) text.erase(0, 3);  // a UTF-8 byte order mark is not part of a key
    std::istringstream f(text);
    po::parsed_options parsed = po::parse_config_file(f, all, true);
    for (auto& o : parsed.options) {
        if (!o.unregistered) {
            require(section_of.count(o.string_key) != 0, "config", "'", visible(file), "': '", visible(o.string_key),
                    "' cannot be set from a config file");
            continue;
        }
        const std::string key = visible(o.string_key);
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
            require(false, key.c_str(), "unknown key in config '", visible(file), "'; '", name, "' belongs in section [",
                    it->second, "] (", it->second, ".", name, ")");
        require(false, key.c_str(), "unknown key in config '", visible(file), "'; ",
                sec.empty()      ? "not an option of longattn-bench (see --help)"
                : !known_section ? "sections are [run], [sweep], [shape], [dist], [pattern], [io]"
                               : "allowed in [" + sec + "]:" + allowed.str());
    }
    po::store(parsed, vm);
}

}  // namespace

Job parse_job(int argc, char** argv, std::string& help_text) {
    std::string device, comm_name, mode, dtype, window, doc_lens, doc_lens_file, doc_dist, threads, minlen, maxlen, config, strategy,
        layout, global_list, block_mask, scaling, seed, doc_seed, random_seed;
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
       ("seed", po::value(&seed)->default_value("1"), "seed of the synthetic inputs (0 to 2^63-1)");
    auto sweep = group("Sweep, nccl-tests style [sweep]", "sweep");
    sweep("minlen,b", po::value(&minlen)->default_value("8K"), "smallest sequence length (K/M/G suffixes)")
         ("maxlen,e", po::value(&maxlen)->default_value(""), "largest sequence length (default: minlen)")
         ("factor,f", po::value(&factor)->default_value(2.0), "multiplication factor between lengths")
         ("scaling", po::value(&scaling)->default_value("strong"),
          "strong: lengths are whole sequences | weak: lengths are tokens per rank")
         ("iters,n", po::value(&j.sweep.iters)->default_value(5), "timed iterations (the median is reported)")
         ("warmup,w", po::value(&j.sweep.warmup)->default_value(1), "warmup iterations")
         ("check,c", po::value(&j.checks.enabled)->default_value(true), "check sampled rows against an fp64 reference")
         ("check-rows", po::value(&j.checks.rows)->default_value(16), "sampled query (and key) rows per rank for the check")
         ("baseline", po::value(&j.checks.baseline)->default_value(false), "kernel mode: also time the unfused GEMM-softmax-GEMM baseline")
         ("peak", po::value(&j.checks.peak)->default_value(true), "kernel mode: measure the FMA peak of this CPU first");
    auto shape = group("Shape [shape]", "shape");
    shape("batch", po::value(&j.shape.batch)->default_value(1), "batch size")
         ("heads", po::value(&j.shape.heads)->default_value(4), "query heads")
         ("kv-heads", po::value(&j.shape.kv_heads)->default_value(0), "key/value heads (0 = heads; GQA/MQA when fewer)")
         ("head-dim", po::value(&j.shape.head_dim)->default_value(128), "head dimension (1..256)")
         ("dtype,d", po::value(&dtype)->default_value("fp32"), "storage type: fp32 | bf16 | fp16");
    auto dist = group("Distribution, under mpirun [dist]", "dist");
    dist("strategy", po::value(&strategy)->default_value("kernel"),
         "kernel (single process) | ring | ulysses | hybrid | allgather")
        ("layout", po::value(&layout)->default_value("zigzag"), "contiguous | zigzag | striped")
        ("comm", po::value(&comm_name)->default_value("mpi"), "mpi | nccl (with --device cuda)")
        ("ulysses-degree", po::value(&j.exec.dist.ulysses_degree)->default_value(1), "hybrid: ranks per Ulysses group (divides the rank count)")
        ("kv-head-chunk", po::value(&j.exec.dist.kv_head_chunk)->default_value(0), "allgather: kv heads gathered at once (0 = all)")
        ("progress-chunks", po::value(&j.exec.dist.progress_chunks)->default_value(4),
         "ring: kernel calls per step, with transfer progress between them")
        ("per-rank", po::value(&j.exec.per_rank)->default_value(false), "print every rank's time, wait, bytes and memory");
    auto pat = group("Pattern [pattern]", "pattern");
    pat("causal", po::value(&j.pattern.spec.causal)->default_value(false), "causal mask")
       ("window", po::value(&window)->default_value(""), "sliding window LEFT,RIGHT (-1 = unbounded)")
       ("docs", po::value(&j.pattern.docs.count)->default_value(0), "pack this many equal documents")
       ("doc-lens", po::value(&doc_lens)->default_value(""), "document lengths, repeated to fill the sequence")
       ("doc-lens-file", po::value(&doc_lens_file)->default_value(""), "file of document lengths (whitespace or commas)")
       ("doc-dist", po::value(&doc_dist)->default_value(""),
        "drawn document lengths: uniform:MIN,MAX | exp:MEAN | lognormal:MEAN,SIGMA")
       ("doc-seed", po::value(&doc_seed)->default_value("1"), "seed of --doc-dist")
       ("global", po::value(&j.pattern.spec.global_first)->default_value(0), "first N tokens are global")
       ("global-list", po::value(&global_list)->default_value(""), "further global token positions")
       ("block", po::value(&j.pattern.spec.block)->default_value(64), "block size of the block-mask, strided and random parts")
       ("block-mask", po::value(&block_mask)->default_value(""), "file of 0/1 rows: allowed key blocks per query block")
       ("stride", po::value(&j.pattern.spec.stride)->default_value(0), "every s-th key block column (0 = off)")
       ("random", po::value(&j.pattern.spec.random_blocks)->default_value(0), "random key blocks per query block")
       ("random-seed", po::value(&random_seed)->default_value("0"), "seed of the random blocks")
       ("softcap", po::value(&j.pattern.spec.softcap)->default_value(0.0f), "tanh softcap of scores (0 = off)")
       ("scale", po::value(&j.pattern.spec.scale)->default_value(0.0f), "softmax scale (0 = 1/sqrt(head-dim))")
       ("alibi", po::value(&j.pattern.alibi)->default_value(false), "ALiBi slopes 2^(-8(h+1)/heads)");
    auto io = group("Inputs and outputs [io]", "io");
    io("load", po::value(&j.io.load_dir)->default_value(""),
       "directory with q.npy, k.npy, v.npy [S, H, D] float32/float16 (dout.npy optional) instead of synthetic inputs")
      ("save", po::value(&j.io.save_dir)->default_value(""),
       "directory for out.npy [S, H, D] and lse.npy [H, S] (dq/dk/dv.npy with bwd), float32, global token order")
      ("json", po::value(&j.io.json_path)->default_value(""), "write the table as JSON to this file")
      ("csv", po::value(&j.io.csv_path)->default_value(""), "write the table as CSV to this file")
      ("allow-nonfinite", po::value(&j.io.allow_nonfinite)->default_value(false),
       "let NaN and Inf in loaded inputs through (they propagate to the outputs) and save such outputs");
    po::options_description general("General");
    general.add_options()("help,h", "print this help")("config", po::value(&config), "INI file with any of the options below");
    po::options_description hidden("Hidden");
    hidden.add_options()
        ("inject-failure", po::value(&j.faults.inject_failure)->default_value(-1), "this rank throws mid-run")
        ("corrupt", po::value(&j.faults.corrupt)->default_value(false), "perturb one output element before the check");
    po::options_description shown;
    shown.add(general).add(run.desc).add(sweep.desc).add(shape.desc).add(dist.desc).add(pat.desc).add(io.desc);
    po::options_description all;
    all.add(shown).add(hidden);

    // Boolean options work bare (--causal) and with a value (--causal false, --causal=false).
    std::vector<std::string> bools;
    for (const auto& o : all.options()) {
        const auto* typed = dynamic_cast<const po::typed_value<bool>*>(o->semantic().get());
        if (typed) bools.push_back(o->long_name());
    }
    const std::vector<std::string> args =
        normalize_bool_flags(std::vector<std::string>(argv + std::min(argc, 1), argv + argc), bools, {{'c', "check"}});
    for (const std::string& a : args) refuse_placeholders(a, "option");

    po::variables_map vm;
    try {
        const po::parsed_options parsed = po::command_line_parser(args).options(all).run();
        const std::vector<std::string> stray = po::collect_unrecognized(parsed.options, po::include_positional);
        require(stray.empty(), "option", "unexpected argument '", stray.empty() ? "" : visible(stray.front()),
                "'; every value belongs to an option (--name value)");
        po::store(parsed, vm);
        if (vm.count("config")) store_config(vm["config"].as<std::string>(), all, section_of, vm);
        po::notify(vm);
    } catch (const po::error& e) {
        throw Error("option: " + visible(e.what()));
    }
    if (vm.count("help")) {
        std::ostringstream os;
        os << "usage: longattn-bench [options]   (under mpirun for the distributed strategies)\n"
           << "In a --config INI file a key sits in its [section] or at the top: [pattern] causal = true\n"
           << shown << '\n';
        help_text = os.str();
        return j;
    }
    for (int i = 0; i < argc; ++i) j.command_line += (i ? " " : "") + std::string(argv[i]);
    auto given = [&](const char* name) { return vm.count(name) && !vm[name].defaulted(); };

    // Seeds are read as signed integers: a negative one is an error, not a wrapped 2^64 - 1.
    for (const auto& [text, key, out] : {std::tuple{&seed, "seed", &j.shape.seed}, std::tuple{&doc_seed, "doc-seed", &j.pattern.docs.seed},
                                         std::tuple{&random_seed, "random-seed", &j.pattern.spec.random_seed}}) {
        const std::int64_t v = parse_int(*text, key, "a seed in [0, 2^63)");
        require(v >= 0, key, "must be in [0, 2^63), got ", v);
        *out = static_cast<std::uint64_t>(v);
    }
    if (mode == "fwd") j.sweep.mode = Mode::fwd;
    else if (mode == "bwd") j.sweep.mode = Mode::bwd;
    else if (mode == "fwd+bwd") j.sweep.mode = Mode::fwd_bwd;
    else require(false, "mode", "must be fwd, bwd or fwd+bwd, got '", mode, "'");
    if (dtype == "fp32") j.shape.dtype = DType::f32;
    else if (dtype == "bf16") j.shape.dtype = DType::bf16;
    else if (dtype == "fp16") j.shape.dtype = DType::f16;
    else require(false, "dtype", "must be fp32, bf16 or fp16, got '", dtype, "'");
    require(device == "cpu" || device == "cuda", "device", "must be cpu or cuda, got '", device, "'");
    j.exec.device = device == "cuda" ? Device::cuda : Device::cpu;
    if (j.exec.device == Device::cuda) {
        require(cuda_built(), "device", "this build has no CUDA kernels (configure with -DLONGATTN_WITH_CUDA=ON)");
        require(j.shape.dtype != DType::f32, "dtype", "the CUDA kernels store bf16 or fp16; choose -d bf16 or -d fp16");
        require(!j.checks.baseline, "baseline", "the unfused baseline runs on the CPU only");
        j.checks.peak = false;  // the FMA peak is the CPU's
    }
    require(comm_name == "mpi" || comm_name == "nccl", "comm", "must be mpi or nccl, got '", comm_name, "'");
    j.exec.nccl = comm_name == "nccl";
    require(scaling == "strong" || scaling == "weak", "scaling", "must be strong or weak, got '", scaling, "'");
    j.sweep.weak = scaling == "weak";

    j.exec.distributed = strategy != "kernel";
    if (j.exec.distributed) j.exec.dist.strategy = parse_strategy(strategy);
    require(!j.exec.nccl || (j.exec.distributed && j.exec.device == Device::cuda), "comm",
            "nccl needs a distributed strategy and --device cuda");
    j.exec.layout = parse_layout(layout);
    require(j.exec.dist.ulysses_degree >= 1, "ulysses-degree", "must be >= 1, got ", j.exec.dist.ulysses_degree);
    require(j.exec.dist.kv_head_chunk >= 0, "kv-head-chunk", "must be >= 0 (0 = all), got ", j.exec.dist.kv_head_chunk);
    require(j.exec.dist.progress_chunks >= 1, "progress-chunks", "must be >= 1, got ", j.exec.dist.progress_chunks);
    for (std::int64_t t : parse_list(threads, "threads", true)) {
        require(t <= 4096, "threads", "must be <= 4096, got ", t);
        j.sweep.threads.push_back(static_cast<int>(t));
    }
    require(!j.exec.distributed || j.sweep.threads.size() == 1, "threads", "takes one value per rank in distributed runs, got ",
            j.sweep.threads.size());
    j.exec.dist.threads = j.sweep.threads.front();
    require(j.sweep.iters >= 1, "iters", "must be >= 1, got ", j.sweep.iters);
    require(j.sweep.warmup >= 0, "warmup", "must be >= 0, got ", j.sweep.warmup);
    require(j.checks.rows >= 1, "check-rows", "must be >= 1, got ", j.checks.rows);
    require(j.shape.batch >= 1, "batch", "must be >= 1, got ", j.shape.batch);

    // Inputs from files fix the shape and the length.
    if (!j.io.load_dir.empty()) {
        require(j.shape.batch == 1, "batch", "must be 1 with --load (the files hold one sequence [S, H, D]), got ", j.shape.batch);
        require(!given("minlen") && !given("maxlen") && !j.sweep.weak, "load", "the sequence length comes from the files; drop -b/-e/--scaling");
        for (const char* f : {"/q.npy", "/k.npy", "/v.npy"}) require_input_file(j.io.load_dir + f, "load");
        const NpyHeader q = npy_read_header(j.io.load_dir + "/q.npy", "load");
        const NpyHeader k = npy_read_header(j.io.load_dir + "/k.npy", "load");
        const NpyHeader v = npy_read_header(j.io.load_dir + "/v.npy", "load");
        const auto dims = [](const NpyHeader& h) {
            std::string t = "[";
            for (std::size_t i = 0; i < h.shape.size(); ++i) t += (i ? ", " : "") + std::to_string(h.shape[i]);
            return t + "]";
        };
        require(q.shape.size() == 3 && k.shape.size() == 3 && v.shape.size() == 3, "load",
                "q.npy, k.npy, v.npy must be 3-d [S, H, D]; got q ", dims(q), ", k ", dims(k), ", v ", dims(v));
        require(v.shape == k.shape, "load", "v.npy must have k.npy's shape; got k ", dims(k), ", v ", dims(v));
        require(q.shape[0] == k.shape[0] && q.shape[2] == k.shape[2], "load",
                "q.npy and k.npy must share S and D; got q [", q.shape[0], ", ", q.shape[1], ", ", q.shape[2], "], k [",
                k.shape[0], ", ", k.shape[1], ", ", k.shape[2], "]");
        require(q.shape[0] > 0, "load", "the files hold an empty sequence");
        require(!given("heads") || j.shape.heads == q.shape[1], "heads", "is ", j.shape.heads, " but q.npy has ", q.shape[1]);
        require(!given("kv-heads") || j.shape.kv_heads == k.shape[1], "kv-heads", "is ", j.shape.kv_heads, " but k.npy has ", k.shape[1]);
        require(!given("head-dim") || j.shape.head_dim == q.shape[2], "head-dim", "is ", j.shape.head_dim, " but q.npy has ", q.shape[2]);
        j.shape.heads = q.shape[1];
        j.shape.kv_heads = k.shape[1];
        j.shape.head_dim = q.shape[2];
        j.sweep.lengths = {q.shape[0]};
        if (::access((j.io.load_dir + "/dout.npy").c_str(), F_OK) == 0) {
            require_input_file(j.io.load_dir + "/dout.npy", "load");
            const NpyHeader d = npy_read_header(j.io.load_dir + "/dout.npy", "load");
            require(d.shape == q.shape, "load", "dout.npy must have q.npy's shape");
        }
    } else {
        const std::int64_t lo = parse_size(minlen, "minlen");
        const std::int64_t hi = maxlen.empty() ? lo : parse_size(maxlen, "maxlen");
        require(hi >= lo, "maxlen", "must be >= minlen (", lo, "), got ", hi);
        require(std::isfinite(factor) && (factor > 1.0 || lo == hi), "factor", "must be a number > 1 for a sweep, got ", factor);
        // Each length is the previous one times the factor, rounded down; a factor that leaves a length
        // unchanged (or a sweep of more than 64 lengths) is refused rather than run forever.
        for (std::int64_t L = lo; L <= hi;) {
            j.sweep.lengths.push_back(L);
            if (lo == hi) break;
            const double next = std::floor(static_cast<double>(L) * factor);
            if (next > static_cast<double>(hi)) break;
            require(static_cast<std::int64_t>(next) > L, "factor", show_number(factor), " does not grow the length ", L,
                    "; use a larger factor (the next length must be at least ", L + 1, ")");
            require(j.sweep.lengths.size() < 64, "factor", show_number(factor), " makes a sweep of more than 64 lengths from ", lo, " to ", hi);
            L = static_cast<std::int64_t>(next);
        }
    }
    require(j.shape.heads >= 1, "heads", "must be >= 1, got ", j.shape.heads);
    if (j.shape.kv_heads == 0) j.shape.kv_heads = j.shape.heads;
    require(j.shape.kv_heads >= 1 && j.shape.heads % j.shape.kv_heads == 0, "kv-heads", "must divide heads (", j.shape.heads, "), got ",
            j.shape.kv_heads);
    require(j.shape.head_dim >= 1 && j.shape.head_dim <= 256, "head-dim", "must be in [1, 256], got ", j.shape.head_dim);

    for (std::int64_t L : j.sweep.lengths) require_tensors_fit(j.shape, L, j.io.load_dir.empty() ? "minlen" : "load");

    if (!window.empty()) {
        const auto comma = window.find(',');
        const std::string form = "LEFT,RIGHT integers (-1 = unbounded)";
        require(comma != std::string::npos && window.find(',', comma + 1) == std::string::npos, "window", "expected ",
                form, ", got '", visible(window), "'");
        j.pattern.spec.window = Window{parse_int(window.substr(0, comma), "window", form),
                                  parse_int(window.substr(comma + 1), "window", form)};
    }
    // Documents: one way at a time.
    const int doc_ways = (j.pattern.docs.count != 0) + !doc_lens.empty() + !doc_lens_file.empty() + !doc_dist.empty();
    require(doc_ways <= 1, "docs", "give one of docs, doc-lens, doc-lens-file or doc-dist, not ", doc_ways);
    require(j.pattern.docs.count >= 0, "docs", "must be >= 0, got ", j.pattern.docs.count);
    if (j.pattern.docs.count > 0) j.pattern.docs.kind = DocSpec::Kind::equal;
    if (!doc_lens.empty() || !doc_lens_file.empty()) {
        const std::uint64_t seed = j.pattern.docs.seed;
        j.pattern.docs = DocSpec{};
        j.pattern.docs.seed = seed;
        j.pattern.docs.kind = DocSpec::Kind::lens;
        j.pattern.docs.lens = doc_lens.empty() ? read_lens_file(doc_lens_file) : parse_list(doc_lens, "doc-lens");
    }
    if (!doc_dist.empty()) {
        const std::uint64_t seed = j.pattern.docs.seed;
        j.pattern.docs = parse_doc_dist(doc_dist);
        j.pattern.docs.seed = seed;
    }
    if (!global_list.empty())
        for (std::int64_t g : parse_list(global_list, "global-list", true)) j.pattern.spec.global_list.push_back(g);
    if (!block_mask.empty()) read_block_mask(block_mask, j.pattern.spec);

    // Outputs: checked now so that a bad path fails before any work, and nothing is half-written.
    if (!j.io.save_dir.empty()) require_output_dir(j.io.save_dir, "save");
    require(j.io.save_dir.empty() || j.shape.batch == 1, "save", "needs batch 1 (the files hold one sequence [S, H, D])");
    require(j.io.save_dir.empty() || j.sweep.lengths.size() == 1, "save", "needs one sequence length, not a sweep of ",
            j.sweep.lengths.size());
    require(j.io.save_dir.empty() || j.sweep.threads.size() == 1, "save", "needs one thread count, not a sweep");
    for (const auto& [path, name] : {std::pair{j.io.json_path, "json"}, std::pair{j.io.csv_path, "csv"}})
        if (!path.empty()) require_output_file(path, name);

    PatternSpec probe = spec_for_length(j, j.sweep.lengths.back());  // validate the pattern before any work starts
    Pattern{probe};
    return j;
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
    require(docs.kind != DocSpec::Kind::equal || docs.count <= shortest, "docs", docs.count, " documents do not fit in ",
            shortest, " tokens (at most one per token)");
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
    require(job.exec.distributed || ranks == 1, "strategy",
            "'kernel' runs in one process; under mpirun choose ring, ulysses, hybrid or allgather");
    if (job.exec.distributed && dist.strategy == StrategyKind::hybrid)
        require(ranks % dist.ulysses_degree == 0, "ulysses-degree", "must divide the number of ranks (", ranks,
                "), got ", dist.ulysses_degree);
    if (job.exec.distributed && dist.strategy == StrategyKind::allgather)
        require(dist.kv_head_chunk <= job.shape.kv_heads, "kv-head-chunk", "must be in [0, kv-heads = ", job.shape.kv_heads,
                "], got ", dist.kv_head_chunk);
}

PatternSpec spec_for_length(const Job& job, std::int64_t n) {
    PatternSpec s = job.pattern.spec;
    s.seq_len = n;
    s.doc_bounds = doc_bounds(job.pattern.docs, n);
    if (job.pattern.alibi)
        for (std::int64_t h = 0; h < job.shape.heads; ++h)
            s.alibi_slopes.push_back(std::exp2(-8.0f * static_cast<float>(h + 1) / static_cast<float>(job.shape.heads)));
    return s;
}

}  // namespace longattn::bench
