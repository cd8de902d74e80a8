// Options of longattn-bench: the command line and an INI file (--config), the command line winning.
// In the INI file a key sits either in its section ([pattern] causal = true, i.e. pattern.causal) or
// at the top as the long option name (causal = true). Anything unknown, misspelt or in the wrong
// section is an error naming the key and what is allowed. This file declares the options and reads
// them; job.cpp makes the job of what they gave.
#include <boost/program_options.hpp>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench.hpp"
#include "bench/option_values.hpp"
#include "bench/parse.hpp"
#include "longattn/error.hpp"

namespace po = boost::program_options;

namespace longattn::bench {
namespace {

// Boost.Program_options fills its messages by replacing %name% tokens in a loop, which never ends when
// the user's text holds such a token: a %name% (letters and '_' between two '%') is refused before the
// parser sees it, outside a comment line of a config file (a command-line argument has no comments,
// even after a newline).
void refuse_placeholders(const std::string& text, const char* key, bool comments) {
    std::size_t line = 0;
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] == '\n') line = i + 1;
        if (text[i] != '%') continue;
        const std::size_t first = text.find_first_not_of(" \t", line);
        if (comments && first != std::string::npos && text[first] == '#') continue;
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
    refuse_placeholders(text, "config", true);
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
                : !known_section ? "sections are [run], [sweep], [shape], [dist], [pattern], [io], [decode]"
                               : "allowed in [" + sec + "]:" + allowed.str());
    }
    po::store(parsed, vm);
}

using SectionOf = std::map<std::string, std::string>;  // option name -> its INI section

// One titled group of --help, whose options are the keys of one INI section.
class OptionGroup {
public:
    OptionGroup(const char* title, const char* section, SectionOf& section_of)
        : desc_(title), section_(section), section_of_(&section_of) {}
    OptionGroup& operator()(const char* name, const po::value_semantic* v, const char* help) {
        const std::string n = name;
        section_of_->emplace(n.substr(0, n.find(',')), section_);
        desc_.add_options()(name, v, help);
        return *this;
    }
    const po::options_description& desc() const { return desc_; }

private:
    po::options_description desc_;
    std::string section_;
    SectionOf* section_of_;
};

// The groups of --help, in its order; each binds its options to their fields of the job or of `v`.
po::options_description run_options(OptionValues& v, SectionOf& section_of) {
    OptionGroup g("Run [run]", "run", section_of);
    g("mode", po::value(&v.mode)->default_value("fwd"), "fwd | bwd | fwd+bwd | decode (see [decode]) | calibrate (a cluster file of this machine for the cost model: the "
      "kernels' throughput at this shape and pattern, and the link between ranks 0 and 1 under mpirun) | predict (in one "
      "process, nothing run: the cost model's forward and backward time on --ranks devices of --cluster, for every "
      "strategy and layout fastest first, or for the one --strategy names on --layout)")
     ("device", po::value(&v.device)->default_value("cpu"),
      "cpu | cuda (the CUDA kernels; one GPU per rank by local rank)")
     ("cpu-isa", po::value(&v.cpu_isa)->default_value("auto"),
      "instruction set of the CPU kernels: auto (LONGATTN_CPU_ISA if set, else the best this CPU runs), avx512-amx (AVX-512 with the bf16 forward on AMX tiles and the bf16 backward by AVX512-BF16 dot products), avx512-bf16 (AVX-512 with every bf16 product, forward and backward, by AVX512-BF16 dot products), avx512, avx2 or sse2")
     ("threads,t", po::value(&v.threads)->default_value("0"),
      "threads per rank, or a list to sweep in kernel mode (0 = all)")
     ("seed", po::value(&v.seed)->default_value("1"), "seed of the synthetic inputs (0 to 2^63-1)")
     ("progress", po::value(&v.progress)->default_value("auto"),
      "a line per iteration on stderr (phase, iteration, elapsed, estimate) once a job has run 3 s: auto (when "
      "stderr is a terminal) | on | off")
     ("quiet,q", po::bool_switch(&v.quiet), "no progress lines (--progress off)")
     ("max-memory", po::value(&v.max_memory)->default_value("0"),
      "bytes a rank may hold (K/M/G suffixes; 0 = what its node gives): a job that needs more is refused before it starts");
    return g.desc();
}

// [sweep] also holds the check's options and the kernel mode's baseline and peak.
po::options_description sweep_options(Sweep& s, Checks& c, OptionValues& v, SectionOf& section_of) {
    OptionGroup g("Sweep, nccl-tests style [sweep]", "sweep", section_of);
    g("minlen,b", po::value(&v.minlen)->default_value("8K"), "smallest sequence length (K/M/G suffixes)")
     ("maxlen,e", po::value(&v.maxlen)->default_value(""), "largest sequence length (default: minlen)")
     ("factor,f", po::value(&v.factor)->default_value(2.0), "multiplication factor between lengths")
     ("scaling", po::value(&v.scaling)->default_value("strong"),
      "strong: lengths are whole sequences | weak: lengths are tokens per rank")
     ("iters,n", po::value(&s.iters)->default_value(5), "timed iterations (the median is reported)")
     ("warmup,w", po::value(&s.warmup)->default_value(1), "warmup iterations")
     ("check,c", po::value(&c.enabled)->default_value(true), "check sampled rows against an fp64 reference")
     ("check-rows", po::value(&c.rows)->default_value(16), "sampled query (and key) rows per rank for the check")
     ("baseline", po::value(&c.baseline)->default_value(false),
      "kernel mode: also time the unfused GEMM-softmax-GEMM baseline")
     ("peak", po::value(&c.peak)->default_value(true), "kernel mode: measure the FMA peak of this CPU first");
    return g.desc();
}

po::options_description shape_options(Shape& s, OptionValues& v, SectionOf& section_of) {
    OptionGroup g("Shape [shape]", "shape", section_of);
    g("batch", po::value(&s.batch)->default_value(1), "batch size")
     ("heads", po::value(&s.heads)->default_value(4), "query heads")
     ("kv-heads", po::value(&s.kv_heads)->default_value(0), "key/value heads (0 = heads; GQA/MQA when fewer)")
     ("head-dim", po::value(&s.head_dim)->default_value(128), "head dimension (1..256)")
     ("dtype,d", po::value(&v.dtype)->default_value("fp32"), "storage type: fp32 | bf16 | fp16");
    return g.desc();
}

po::options_description dist_options(Execution& x, OptionValues& v, SectionOf& section_of) {
    OptionGroup g("Distribution, under mpirun [dist]", "dist", section_of);
    g("strategy", po::value(&v.strategy)->default_value("kernel"),
      "kernel (single process) | ring | ulysses | hybrid | allgather | auto (the strategy, Ulysses degree and layout "
      "the cost model predicts fastest on --cluster)")
     ("cluster", po::value(&v.cluster)->default_value(""),
      "a cluster file (configs/clusters/): the cost model then predicts each length's time next to the measured one")
     ("layout", po::value(&v.layout)->default_value("zigzag"), "contiguous | zigzag | striped")
     ("ranks", po::value(&v.ranks)->default_value(0),
      "--mode predict: the ranks (devices) modelled, 1 to 4096 (0 = the cluster's devices)")
     ("comm", po::value(&v.comm)->default_value("mpi"), "mpi | nccl (with --device cuda)")
     ("plan", po::value(&v.plan)->default_value("reuse"),
      "reuse: one plan per length for every call, as a training loop | per-call: a one-shot plan each call")
     ("ulysses-degree", po::value(&x.dist.ulysses_degree)->default_value(1),
      "hybrid: ranks per Ulysses group (divides the rank count)")
     ("kv-head-chunk", po::value(&x.dist.kv_head_chunk)->default_value(0),
      "allgather: kv heads gathered at once (0 = all)")
     ("progress-chunks", po::value(&x.dist.progress_chunks)->default_value(4),
      "ring: kernel calls per step, with transfer progress between them")
     ("per-rank", po::value(&x.per_rank)->default_value(false), "print every rank's time, wait, bytes and memory")
     ("auto-check", po::value(&x.auto_check)->default_value(0),
      "with --strategy auto: after the run, time the cost model's first N choices at the largest length, one call "
      "each in turn for --iters rounds, and say whether the pick came within 10% of the fastest measured (0 = off)")
     ("timeout", po::value(&x.timeout_s)->default_value(60.0),
      "watchdog: a rank that shows no sign of life (heartbeat) for this many seconds ends the job with exit 3; "
      "slow ranks that are alive are waited for (0 = no watchdog)");
    return g.desc();
}

po::options_description pattern_options(AttentionPattern& p, OptionValues& v, SectionOf& section_of) {
    OptionGroup g("Pattern [pattern]", "pattern", section_of);
    g("causal", po::value(&p.spec.causal)->default_value(false), "causal mask")
     ("window", po::value(&v.window)->default_value(""), "sliding window LEFT,RIGHT (-1 = unbounded)")
     ("docs", po::value(&p.docs.count)->default_value(0), "pack this many equal documents")
     ("doc-lens", po::value(&v.doc_lens)->default_value(""), "document lengths, repeated to fill the sequence")
     ("doc-lens-file", po::value(&v.doc_lens_file)->default_value(""),
      "file of document lengths (whitespace or commas)")
     ("doc-dist", po::value(&v.doc_dist)->default_value(""),
      "drawn document lengths: uniform:MIN,MAX | exp:MEAN | lognormal:MEAN,SIGMA")
     ("doc-seed", po::value(&v.doc_seed)->default_value("1"), "seed of --doc-dist")
     ("global", po::value(&p.spec.global_first)->default_value(0), "first N tokens are global")
     ("global-list", po::value(&v.global_list)->default_value(""), "further global token positions")
     ("block", po::value(&p.spec.block)->default_value(64), "block size of the block-mask, strided and random parts")
     ("block-mask", po::value(&v.block_mask)->default_value(""), "file of 0/1 rows: allowed key blocks per query block")
     ("stride", po::value(&p.spec.stride)->default_value(0), "every s-th key block column (0 = off)")
     ("random", po::value(&p.spec.random_blocks)->default_value(0), "random key blocks per query block")
     ("random-seed", po::value(&v.random_seed)->default_value("0"), "seed of the random blocks")
     ("softcap", po::value(&p.spec.softcap)->default_value(0.0f), "tanh softcap of scores (0 = off)")
     ("scale", po::value(&p.spec.scale)->default_value(0.0f), "softmax scale (0 = 1/sqrt(head-dim))")
     ("alibi", po::value(&p.alibi)->default_value(false), "ALiBi slopes 2^(-8(h+1)/heads)");
    return g.desc();
}

po::options_description io_options(Io& io, SectionOf& section_of) {
    OptionGroup g("Inputs and outputs [io]", "io", section_of);
    g("load", po::value(&io.load_dir)->default_value(""),
      "directory with q.npy, k.npy, v.npy [S, H, D] float32/float16 (dout.npy optional) instead of synthetic inputs")
     ("save", po::value(&io.save_dir)->default_value(""),
      "directory for out.npy [S, H, D] and lse.npy [H, S] (dq/dk/dv.npy with bwd), float32, global token order")
     ("json", po::value(&io.json_path)->default_value(""), "write the table as JSON to this file")
     ("csv", po::value(&io.csv_path)->default_value(""), "write the table as CSV to this file")
     ("allow-nonfinite", po::value(&io.allow_nonfinite)->default_value(false),
      "let NaN and Inf in loaded inputs through (they propagate to the outputs) and save such outputs");
    return g.desc();
}

po::options_description decode_options(Decode& d, OptionValues& v, SectionOf& section_of) {
    OptionGroup g("Decoding, --mode decode: a KV cache of -b tokens per sequence, then decode steps [decode]", "decode",
                  section_of);
    g("steps", po::value(&d.steps)->default_value(16), "decode steps (the first --warmup are not timed)")
     ("new-tokens", po::value(&d.new_tokens)->default_value(1), "new tokens per sequence per step")
     ("page-tokens", po::value(&d.page_tokens)->default_value(64), "slots per page of the KV cache (a multiple of 16)")
     ("kv-placement", po::value(&v.kv_placement)->default_value("round-robin"),
      "round-robin: pages dealt to the ranks in turn | layout: positions placed by --layout")
     ("combine", po::value(&v.combine)->default_value("allgather"),
      "allgather | allreduce | both (alternated step by step): how the ranks' partials are combined")
     ("fill", po::value(&v.fill)->default_value("synth"),
      "synth: the cache straight from the generator | prefill: a forward through --strategy writes it")
     ("baselines", po::value(&d.baselines)->default_value(true),
      "also time pass-Q (a ring passing the queries) and the cache gathered onto rank 0");
    return g.desc();
}

// Every option, bound to its field of `j` or `v` (which must outlive the parse): `shown` is what --help
// prints, `all` adds the hidden ones.
struct Declared {
    SectionOf section_of;
    po::options_description shown, all;
};

void declare_options(Job& j, OptionValues& v, Declared& d) {
    po::options_description general("General");
    general.add_options()("help,h", "print this help")
        ("config", po::value(&v.config), "INI file with any of the options below");
    d.shown.add(general);
    d.shown.add(run_options(v, d.section_of));
    d.shown.add(sweep_options(j.sweep, j.checks, v, d.section_of));
    d.shown.add(shape_options(j.shape, v, d.section_of));
    d.shown.add(dist_options(j.exec, v, d.section_of));
    d.shown.add(pattern_options(j.pattern, v, d.section_of));
    d.shown.add(io_options(j.io, d.section_of));
    d.shown.add(decode_options(j.decode, v, d.section_of));
    po::options_description hidden("Hidden");
    hidden.add_options()
        ("inject-failure", po::value(&j.faults.inject_failure)->default_value(-1), "this rank throws mid-run")
        ("inject-stop", po::value(&j.faults.inject_stop)->default_value(-1), "this rank stops itself (SIGSTOP) mid-run")
        ("inject-stop-after-s", po::value(&j.faults.stop_after_s)->default_value(0.0),
         "--inject-stop that many seconds into the first timed iteration")
        ("inject-sleep", po::value(&j.faults.inject_sleep)->default_value(-1), "this rank sleeps mid-run")
        ("inject-sleep-s", po::value(&j.faults.sleep_s)->default_value(10.0), "how long --inject-sleep sleeps")
        ("inject-save-kill", po::value(&j.faults.save_kill)->default_value(-1), "this rank dies (SIGKILL) mid-save")
        ("inject-publish-failure", po::value(&j.faults.publish_failure)->default_value(-1),
         "the publish of the outputs fails at this step")
        ("corrupt", po::value(&j.faults.corrupt)->default_value(false), "perturb one output element before the check");
    d.all.add(d.shown).add(hidden);
}

// The command line, then the config file: Boost keeps the value stored first, so the command line wins.
// Boost's own errors (a bad value, an unknown option) become "option: ..." messages.
po::variables_map read_options(int argc, char** argv, const Declared& d) {
    // Boolean options work bare (--causal) and with a value (--causal false, --causal=false).
    std::vector<std::string> bools;
    for (const auto& o : d.all.options()) {
        const auto* typed = dynamic_cast<const po::typed_value<bool>*>(o->semantic().get());
        if (typed) bools.push_back(o->long_name());
    }
    const std::vector<std::string> args =
        normalize_bool_flags(std::vector<std::string>(argv + std::min(argc, 1), argv + argc), bools, {{'c', "check"}});
    for (const std::string& a : args) refuse_placeholders(a, "option", false);

    po::variables_map vm;
    try {
        const po::parsed_options parsed = po::command_line_parser(args).options(d.all).run();
        const std::vector<std::string> stray = po::collect_unrecognized(parsed.options, po::include_positional);
        require(stray.empty(), "option", "unexpected argument '", stray.empty() ? "" : visible(stray.front()),
                "'; every value belongs to an option (--name value)");
        po::store(parsed, vm);
        if (vm.count("config")) store_config(vm["config"].as<std::string>(), d.all, d.section_of, vm);
        po::notify(vm);
    } catch (const po::error& e) {
        throw Error("option: " + visible(e.what()));
    }
    return vm;
}

// What --help prints.
std::string usage(const po::options_description& shown) {
    std::ostringstream os;
    os << "usage: longattn-bench [options]   (under mpirun for the distributed strategies)\n"
       << "In a --config INI file a key sits in its [section] or at the top: [pattern] causal = true\n"
       << shown << '\n';
    return os.str();
}

}  // namespace

Job parse_job(int argc, char** argv, std::string& help_text) {
    Job j;
    OptionValues v;
    Declared d;
    declare_options(j, v, d);
    const po::variables_map vm = read_options(argc, argv, d);
    if (vm.count("help")) {
        help_text = usage(d.shown);
        return j;
    }
    for (int i = 0; i < argc; ++i) j.command_line.append(i ? " " : "").append(argv[i]);
    for (const auto& [name, value] : vm)
        if (!value.defaulted()) v.given.insert(name);
    complete_job(v, j);
    return j;
}

}  // namespace longattn::bench
