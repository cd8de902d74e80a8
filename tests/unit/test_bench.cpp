// The bench driver's parts with exact values: .npy files, --save in global order, output sets that
// appear whole or not at all, document layouts,
// and the option parser (INI sections, precedence, errors naming the key).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <numeric>
#include <set>

#include "bench/bench.hpp"
#include "bench/npy.hpp"
#include "bench/outputs.hpp"
#include "bench/parse.hpp"
#include "bench/save.hpp"
#include "longattn/error.hpp"

using namespace longattn;
using namespace longattn::bench;
namespace fs = std::filesystem;

namespace {

// A fresh directory under the system's temporary directory, removed at the end of the test.
struct TempDir {
    fs::path path;
    TempDir() {
        path = fs::temp_directory_path() / ("longattn-test-" + std::to_string(::getpid()) + "-" +
                                            ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~TempDir() { fs::remove_all(path); }
    std::string file(const std::string& name) const { return (path / name).string(); }
};

// The names in dir (those starting with prefix, when given).
std::set<std::string> names_in(const fs::path& dir, const std::string& prefix = "") {
    std::set<std::string> out;
    for (const auto& e : fs::directory_iterator(dir)) {
        const std::string n = e.path().filename().string();
        if (n.compare(0, prefix.size(), prefix) == 0) out.insert(n);
    }
    return out;
}

void write_bytes(const std::string& path, const std::string& bytes) {
    std::ofstream f(path, std::ios::binary);
    f << bytes;
}

// A .npy file with a hand-written header.
std::string npy_bytes(const std::string& dict, const std::string& data, int major = 1) {
    std::string h = dict;
    const std::size_t pre = major == 1 ? 10 : 12;
    while ((pre + h.size() + 1) % 64 != 0) h += ' ';
    h += '\n';
    std::string out = "\x93NUMPY";
    out += static_cast<char>(major);
    out += '\0';
    out += static_cast<char>(h.size() & 0xff);
    out += static_cast<char>((h.size() >> 8) & 0xff);
    if (major != 1) out += std::string(2, '\0');
    return out + h + data;
}

std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    return "(no error)";
}

Job parse(std::vector<std::string> args) {
    args.insert(args.begin(), "longattn-bench");
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    std::string help;
    return parse_job(static_cast<int>(argv.size()), argv.data(), help);
}

}  // namespace

TEST(Npy, WriterPiecesInAnyOrderReadBackExactly) {
    TempDir dir;
    const std::string path = dir.file("a.npy");
    NpyWriter w(path, {5, 3});
    w.create();
    const float hi[] = {9, 10, 11, 12, 13, 14}, lo[] = {0, 1, 2}, mid[] = {3, 4, 5, 6, 7, 8};
    w.write(9, 6, hi);
    w.write(0, 3, lo);
    w.write(3, 6, mid);
    w.finish();
    const NpyHeader h = npy_read_header(path, "load");
    EXPECT_EQ(h.shape, (std::vector<std::int64_t>{5, 3}));
    EXPECT_EQ(h.dtype, DType::f32);
    EXPECT_EQ(h.data_offset % 64, 0u);
    NpyReader r(path, "load");
    std::vector<float> all(15);
    r.read(0, 15, all.data());
    for (int i = 0; i < 15; ++i) EXPECT_EQ(all[static_cast<std::size_t>(i)], float(i));
    float two[2];
    r.read(7, 2, two);
    EXPECT_EQ(two[0], 7.0f);
    EXPECT_EQ(two[1], 8.0f);
}

TEST(Npy, ReadsFloat16AndVersion2Headers) {
    TempDir dir;
    std::string data;
    for (float x : {1.5f, -2.0f, 65504.0f, 0.0009765625f}) {
        const std::uint16_t u = f32_to_f16(x);
        data += static_cast<char>(u & 0xff);
        data += static_cast<char>(u >> 8);
    }
    write_bytes(dir.file("h.npy"), npy_bytes("{'descr': '<f2', 'fortran_order': False, 'shape': (2, 2), }", data, 2));
    NpyReader r(dir.file("h.npy"), "load");
    EXPECT_EQ(r.header().dtype, DType::f16);
    float out[4];
    r.read(0, 4, out);
    EXPECT_EQ(out[0], 1.5f);
    EXPECT_EQ(out[1], -2.0f);
    EXPECT_EQ(out[2], 65504.0f);
    EXPECT_EQ(out[3], 0.0009765625f);
}

TEST(Npy, BadFilesNameTheOptionAndTheProblem) {
    TempDir dir;
    write_bytes(dir.file("text.npy"), "hello, not numpy");
    EXPECT_NE(error_of([&] { npy_read_header(dir.file("text.npy"), "load"); }).find("load: '"), std::string::npos);
    EXPECT_NE(error_of([&] { npy_read_header(dir.file("text.npy"), "load"); }).find("not a .npy file"), std::string::npos);
    write_bytes(dir.file("f8.npy"), npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", std::string(8, '\0')));
    EXPECT_NE(error_of([&] { npy_read_header(dir.file("f8.npy"), "load"); }).find("allowed: float32 ('<f4') or float16"),
              std::string::npos);
    write_bytes(dir.file("fo.npy"), npy_bytes("{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }", std::string(4, '\0')));
    EXPECT_NE(error_of([&] { npy_read_header(dir.file("fo.npy"), "load"); }).find("Fortran order"), std::string::npos);
    write_bytes(dir.file("short.npy"), npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 4), }", std::string(8, '\0')));
    EXPECT_NE(error_of([&] { npy_read_header(dir.file("short.npy"), "load"); }).find("truncated"), std::string::npos);
    EXPECT_NE(error_of([&] { npy_read_header(dir.file("missing.npy"), "load"); }).find("cannot open"), std::string::npos);
}

TEST(Save, RowsLandInGlobalOrderWhateverTheLayout) {
    TempDir dir;
    Job job;
    job.io.save_dir = dir.path.string();
    job.shape.heads = 2;
    job.shape.kv_heads = 1;
    job.shape.head_dim = 3;
    const std::int64_t N = 7;
    // Two "ranks" holding zigzag-like rows: {0, 1, 5, 6} and {2, 3, 4}; written by one process in turn
    // would need two calls, so the local rows here are all of them in a shuffled order.
    const std::vector<std::int64_t> pos = {5, 6, 0, 1, 2, 3, 4};
    std::vector<float> o(static_cast<std::size_t>(N * 2 * 3)), lse(static_cast<std::size_t>(2 * N)),
        dq(o.size()), dk(static_cast<std::size_t>(N * 3)), dv(dk.size());
    for (std::int64_t s = 0; s < N; ++s)
        for (std::int64_t h = 0; h < 2; ++h) {
            for (std::int64_t d = 0; d < 3; ++d) {
                o[static_cast<std::size_t>((s * 2 + h) * 3 + d)] = float(100 * pos[static_cast<std::size_t>(s)] + 10 * h + d);
                dq[static_cast<std::size_t>((s * 2 + h) * 3 + d)] = -o[static_cast<std::size_t>((s * 2 + h) * 3 + d)];
            }
            lse[static_cast<std::size_t>(h * N + s)] = float(pos[static_cast<std::size_t>(s)] + 0.5 * h);
        }
    for (std::int64_t s = 0; s < N; ++s)
        for (std::int64_t d = 0; d < 3; ++d) {
            dk[static_cast<std::size_t>(s * 3 + d)] = float(1000 + 10 * pos[static_cast<std::size_t>(s)] + d);
            dv[static_cast<std::size_t>(s * 3 + d)] = float(2000 + 10 * pos[static_cast<std::size_t>(s)] + d);
        }
    RankRows r;
    r.pos = pos.data();
    r.S = N;
    r.o = contiguous_view(o.data(), DType::f32, 1, N, 2, 3);
    r.lse = lse.data();
    r.dq = contiguous_view(dq.data(), DType::f32, 1, N, 2, 3);
    r.dk = contiguous_view(dk.data(), DType::f32, 1, N, 1, 3);
    r.dv = contiguous_view(dv.data(), DType::f32, 1, N, 1, 3);
    {
        OutputSet out(job, nullptr);
        save_outputs(job, N, r, nullptr, out);
        EXPECT_FALSE(fs::exists(dir.file("out.npy"))) << "nothing is visible before the publish";
        out.publish();
    }

    std::vector<float> got(static_cast<std::size_t>(N * 2 * 3));
    NpyReader(dir.file("out.npy"), "t").read(0, N * 6, got.data());
    for (std::int64_t g = 0; g < N; ++g)
        for (std::int64_t h = 0; h < 2; ++h)
            for (std::int64_t d = 0; d < 3; ++d) EXPECT_EQ(got[static_cast<std::size_t>((g * 2 + h) * 3 + d)], float(100 * g + 10 * h + d));
    NpyReader(dir.file("dq.npy"), "t").read(0, N * 6, got.data());
    EXPECT_EQ(got[static_cast<std::size_t>((4 * 2 + 1) * 3 + 2)], -412.0f);
    std::vector<float> l(static_cast<std::size_t>(2 * N));
    NpyReader lr(dir.file("lse.npy"), "t");
    EXPECT_EQ(lr.header().shape, (std::vector<std::int64_t>{2, N}));
    lr.read(0, 2 * N, l.data());
    for (std::int64_t h = 0; h < 2; ++h)
        for (std::int64_t g = 0; g < N; ++g) EXPECT_EQ(l[static_cast<std::size_t>(h * N + g)], float(g + 0.5 * h));
    std::vector<float> k(static_cast<std::size_t>(N * 3));
    NpyReader(dir.file("dv.npy"), "t").read(0, N * 3, k.data());
    for (std::int64_t g = 0; g < N; ++g) EXPECT_EQ(k[static_cast<std::size_t>(g * 3 + 1)], float(2000 + 10 * g + 1));
    // The five arrays and the manifest, and nothing left beside the directory.
    EXPECT_EQ(names_in(dir.path), (std::set<std::string>{"dk.npy", "dq.npy", "dv.npy", "lse.npy", "manifest.json", "out.npy"}));
    EXPECT_EQ(names_in(dir.path.parent_path(), "." + dir.path.filename().string() + ".longattn-"), std::set<std::string>{});
}

// A job's outputs for the OutputSet tests: a --save directory `set` and a --json file beside it, in a
// fresh directory; `fill` stands for the run writing them.
struct OutputsCase {
    TempDir root;
    Job job;
    std::string set = root.file("set"), json = root.file("r.json");
    OutputsCase() {
        job.io.save_dir = set;
        job.io.json_path = json;
        job.command_line = "longattn-bench --test";
    }
    void run(const std::string& tag, int publish_failure = -1) {
        job.faults.publish_failure = publish_failure;
        OutputSet out(job, nullptr);
        write_bytes(out.staged("out.npy", {1}), tag);
        if (tag == "first") write_bytes(out.staged("dq.npy", {1}), tag);  // the second run has no backward
        out.write_text(json, tag);
        out.publish();
    }
    std::string read(const std::string& path) const {
        std::ifstream f(path);
        return std::string(std::istreambuf_iterator<char>(f), {});
    }
};

TEST(Outputs, ANewSetReplacesTheOldOneWhole) {
    OutputsCase c;
    c.run("first");
    EXPECT_EQ(names_in(c.set), (std::set<std::string>{"dq.npy", "manifest.json", "out.npy"}));
    c.run("second");
    // The first run's dq.npy does not survive beside the second run's out.npy.
    EXPECT_EQ(names_in(c.set), (std::set<std::string>{"manifest.json", "out.npy"}));
    EXPECT_EQ(c.read(c.set + "/out.npy"), "second");
    EXPECT_EQ(c.read(c.json), "second");
    EXPECT_NE(c.read(c.set + "/manifest.json").find("\"out.npy\": [1]"), std::string::npos);
    EXPECT_EQ(names_in(c.root.path), (std::set<std::string>{"r.json", "set"}));
}

TEST(Outputs, AFailedPublishLeavesEveryOldFileAsItWas) {
    for (int step : {0, 1}) {  // the --json rename fails, or the directory's after the --json is in place
        OutputsCase c;
        c.run("first");
        EXPECT_THROW(c.run("second", step), std::runtime_error) << step;
        EXPECT_EQ(c.read(c.json), "first") << step;
        EXPECT_EQ(c.read(c.set + "/out.npy"), "first") << step;
        EXPECT_EQ(names_in(c.set), (std::set<std::string>{"dq.npy", "manifest.json", "out.npy"})) << step;
        EXPECT_EQ(names_in(c.root.path), (std::set<std::string>{"r.json", "set"})) << step;
    }
}

TEST(Outputs, NothingAppearsUnlessPublished) {
    OutputsCase c;
    {
        OutputSet out(c.job, nullptr);
        write_bytes(out.staged("out.npy", {1}), "x");
        out.write_text(c.json, "x");
    }  // a failure: the set is dropped
    EXPECT_EQ(names_in(c.root.path), std::set<std::string>{});
}

TEST(Outputs, LeftoversOfAKilledJobAreRemovedByTheNext) {
    OutputsCase c;
    fs::create_directories(c.root.file(".set.longattn-partial-77-1"));
    write_bytes(c.root.file(".set.longattn-partial-77-1/out.npy"), "stale");
    write_bytes(c.root.file(".r.json.longattn-partial-77-1"), "stale");
    write_bytes(c.root.file(".other.longattn-partial-77-1"), "not ours");
    c.run("first");
    EXPECT_EQ(names_in(c.root.path), (std::set<std::string>{".other.longattn-partial-77-1", "r.json", "set"}));
}

TEST(Outputs, ASaveTargetOfForeignFilesIsRefused) {
    TempDir dir;
    EXPECT_NO_THROW(check_save_target(dir.file("new"), "save"));
    EXPECT_NO_THROW(check_save_target(dir.path.string(), "save"));  // empty
    write_bytes(dir.file("notes.txt"), "mine");
    EXPECT_NE(error_of([&] { check_save_target(dir.path.string(), "save"); }).find("holds files that no --save wrote"),
              std::string::npos);
    write_bytes(dir.file("manifest.json"), "{}");
    EXPECT_NO_THROW(check_save_target(dir.path.string(), "save"));
    EXPECT_NE(error_of([&] { check_save_target(dir.file("notes.txt"), "save"); }).find("exists and is not a directory"),
              std::string::npos);
    EXPECT_NE(error_of([&] { check_save_target("/", "save"); }).find("mount point"), std::string::npos);
}

TEST(Docs, ExactBoundsForEqualAndGivenLengths) {
    DocSpec eq;
    eq.kind = DocSpec::Kind::equal;
    eq.count = 3;
    EXPECT_EQ(doc_bounds(eq, 10), (std::vector<std::int64_t>{0, 3, 6, 10}));
    eq.count = 20;  // more documents than tokens: one token each
    EXPECT_EQ(doc_bounds(eq, 4), (std::vector<std::int64_t>{0, 1, 2, 3, 4}));
    DocSpec lens;
    lens.kind = DocSpec::Kind::lens;
    lens.lens = {3, 5};
    EXPECT_EQ(doc_bounds(lens, 20), (std::vector<std::int64_t>{0, 3, 8, 11, 16, 19, 20}));
    EXPECT_TRUE(doc_bounds(DocSpec{}, 100).empty());
}

TEST(Docs, DrawnLengthsAreDeterministicAndHaveTheirMean) {
    for (auto kind : {DocSpec::Kind::uniform, DocSpec::Kind::exponential, DocSpec::Kind::lognormal}) {
        DocSpec d;
        d.kind = kind;
        d.a = kind == DocSpec::Kind::uniform ? 100 : 500;
        d.b = kind == DocSpec::Kind::uniform ? 900 : 1.0;
        d.seed = 42;
        const std::int64_t n = 2'000'000;
        const auto b = doc_bounds(d, n);
        EXPECT_EQ(b, doc_bounds(d, n)) << "the same on every call (and so on every rank)";
        ASSERT_GE(b.size(), 2u);
        EXPECT_EQ(b.front(), 0);
        EXPECT_EQ(b.back(), n);
        for (std::size_t i = 1; i < b.size(); ++i) ASSERT_GT(b[i], b[i - 1]);
        const double mean = double(n) / double(b.size() - 1);
        EXPECT_NEAR(mean, 500.0, 25.0) << d.describe();
        d.seed = 43;
        EXPECT_NE(b, doc_bounds(d, n)) << "another seed, other documents";
    }
}

TEST(Options, IniSectionsTopLevelKeysAndCommandLinePrecedence) {
    TempDir dir;
    const std::string ini = dir.file("job.ini");
    write_bytes(ini,
                "# comment\nmode = fwd+bwd\n[sweep]\nminlen = 2K\nmaxlen = 8K\niters = 3\n[shape]\nheads = 8\nkv-heads = 2\n"
                "head-dim = 64\n[dist]\nstrategy = ring\nlayout = striped\n[pattern]\ncausal = true\nwindow = 128,0\n"
                "doc-dist = exp:512\ndoc-seed = 9\n");
    const Job j = parse({"--config", ini, "--heads", "4", "-n", "7"});
    EXPECT_EQ(j.sweep.mode, Mode::fwd_bwd);
    EXPECT_EQ(j.sweep.lengths, (std::vector<std::int64_t>{2048, 4096, 8192}));
    EXPECT_EQ(j.sweep.iters, 7) << "the command line wins";
    EXPECT_EQ(j.shape.heads, 4) << "the command line wins";
    EXPECT_EQ(j.shape.kv_heads, 2);
    EXPECT_EQ(j.shape.head_dim, 64);
    EXPECT_TRUE(j.exec.distributed);
    EXPECT_EQ(j.exec.dist.strategy, StrategyKind::ring);
    EXPECT_EQ(j.exec.layout, LayoutKind::striped);
    EXPECT_TRUE(j.pattern.spec.causal);
    ASSERT_TRUE(j.pattern.spec.window.has_value());
    EXPECT_EQ(j.pattern.spec.window->left, 128);
    EXPECT_EQ(j.pattern.spec.window->right, 0);
    EXPECT_EQ(j.pattern.docs.kind, DocSpec::Kind::exponential);
    EXPECT_EQ(j.pattern.docs.a, 512.0);
    EXPECT_EQ(j.pattern.docs.seed, 9u);
}

TEST(Options, BadInputNamesTheKeyAndWhatIsAllowed) {
    TempDir dir;
    auto ini = [&](const std::string& text) {
        write_bytes(dir.file("bad.ini"), text);
        return error_of([&] { parse({"--config", dir.file("bad.ini")}); });
    };
    std::string e = ini("[pattern]\ncausl = true\n");
    EXPECT_NE(e.find("pattern.causl"), std::string::npos) << e;
    EXPECT_NE(e.find("allowed in [pattern]:"), std::string::npos) << e;
    EXPECT_NE(e.find(" causal"), std::string::npos) << e;
    e = ini("[shape]\ncausal = true\n");
    EXPECT_NE(e.find("belongs in section [pattern]"), std::string::npos) << e;
    e = ini("[pattern]\ncausal = maybe\n");
    EXPECT_NE(e.find("causal"), std::string::npos) << e;
    EXPECT_NE(e.find("maybe"), std::string::npos) << e;
    e = ini("[nonsense]\nx = 1\n");
    EXPECT_NE(e.find("sections are [run], [sweep]"), std::string::npos) << e;
    e = ini("causl = 1\n");
    EXPECT_NE(e.find("causl: unknown key"), std::string::npos) << e;
    EXPECT_NE(e.find("not an option of longattn-bench"), std::string::npos) << e;
    // A %name% token (Boost's message placeholders) is refused, in an argument even after a newline and
    // a '#' (a command line has no comments); a config file's comment lines may hold one.
    e = error_of([] { parse({"--global-list=1\n# x %canonical_option% y"}); });
    EXPECT_NE(e.find("'%name%' tokens are not allowed"), std::string::npos) << e;
    EXPECT_EQ(ini("# a %value% here\n[pattern]\ncausal = true\n"), "(no error)");
    e = ini("help = 1\n");
    EXPECT_NE(e.find("cannot be set from a config file"), std::string::npos) << e;

    EXPECT_NE(error_of([] { parse({"--heads", "6", "--kv-heads", "4"}); }).find("kv-heads: must divide heads (6)"),
              std::string::npos);
    EXPECT_NE(error_of([] { parse({"-d", "fp8"}); }).find("dtype: must be fp32, bf16 or fp16, got 'fp8'"), std::string::npos);
    EXPECT_NE(error_of([] { parse({"--doc-dist", "zipf:3"}); }).find("doc-dist: unknown distribution 'zipf'"), std::string::npos);
    EXPECT_NE(error_of([] { parse({"--docs", "3", "--doc-lens", "5"}); }).find("docs: give one of"), std::string::npos);
    EXPECT_NE(error_of([] { parse({"--save", "/nonexistent/dir"}); }).find("save: cannot create '/nonexistent/dir': '/nonexistent' is not a directory"),
              std::string::npos);
    EXPECT_NE(error_of([] { parse({"--json", "/nonexistent/dir/r.json"}); }).find("json: the directory"), std::string::npos);
    EXPECT_NE(error_of([&] { parse({"--save", dir.file("out"), "-b", "1K", "-e", "4K"}); }).find("save: needs one sequence length"),
              std::string::npos);
    EXPECT_NE(error_of([] { parse({"--load", "/nonexistent"}); }).find("load: cannot open '/nonexistent/q.npy'"),
              std::string::npos);
    EXPECT_NE(error_of([] { parse({"--scaling", "linear"}); }).find("scaling: must be strong or weak"), std::string::npos);

    const Job j = parse({"--strategy", "hybrid", "--ulysses-degree", "3", "-b", "1K"});
    EXPECT_NE(error_of([&] { validate_for_ranks(j, 4); }).find("ulysses-degree: must divide the number of ranks (4)"),
              std::string::npos);
    EXPECT_NE(error_of([&] { validate_for_ranks(parse({"-b", "1K", "--window", "2000,0"}), 1); }).find("window: each side"),
              std::string::npos);
    EXPECT_NE(error_of([&] { validate_for_ranks(parse({"-b", "1K"}), 2); }).find("strategy: 'kernel' runs in one process"),
              std::string::npos);
}

namespace {

TEST(Parse, SizesAreWholeNumbersWithSuffixesAndNeverWrap) {
    EXPECT_EQ(parse_size("7", "k"), 7);
    EXPECT_EQ(parse_size("64K", "k"), 65536);
    EXPECT_EQ(parse_size("3m", "k"), 3 << 20);
    EXPECT_EQ(parse_size("2G", "k"), std::int64_t{2} << 30);
    EXPECT_EQ(parse_size("9223372036854775807", "k"), INT64_MAX);
    EXPECT_EQ(parse_size("8589934591G", "k"), std::int64_t{8589934591} << 30);
    for (const char* bad : {"", "0", "-1", "+0", "4Q", "4KK", "1e3", "K", "12abcK", " 5", "5 "})
        EXPECT_NE(error_of([&] { parse_size(bad, "minlen"); }).find("minlen: "), std::string::npos) << bad;
    EXPECT_NE(error_of([] { parse_size("9223372036854775807K", "minlen"); }).find("overflows 64-bit sizes"), std::string::npos);
    EXPECT_NE(error_of([] { parse_size("8589934592G", "minlen"); }).find("overflows 64-bit sizes"), std::string::npos);
    EXPECT_NE(error_of([] { parse_size("99999999999999999999", "minlen"); }).find("out of range"), std::string::npos);
    EXPECT_EQ(parse_list("1K, 2K\t0", "k", true), (std::vector<std::int64_t>{1024, 2048, 0}));
}

TEST(Parse, IntegersAreWholeAndInRange) {
    EXPECT_EQ(parse_int("-1", "w", "n"), -1);
    EXPECT_EQ(parse_int("+5", "w", "n"), 5);
    EXPECT_EQ(parse_int("-9223372036854775808", "w", "n"), INT64_MIN);
    for (const char* bad : {"", "-", "5 ", " 5", "0x10", "1e3", "1.0", "١"})
        EXPECT_NE(error_of([&] { parse_int(bad, "window", "an integer"); }).find("window: expected an integer"),
                  std::string::npos)
            << bad;
    EXPECT_NE(error_of([] { parse_int("9223372036854775808", "w", "n"); }).find("out of range"), std::string::npos);
}

TEST(Parse, CheckedArithmetic) {
    EXPECT_EQ(checked_mul(INT64_MAX / 2, 2, "k", "x"), INT64_MAX - 1);
    EXPECT_EQ(checked_add(INT64_MAX - 1, 1, "k", "x"), INT64_MAX);
    EXPECT_NE(error_of([] { checked_mul(INT64_MAX / 2 + 1, 2, "minlen", "the tensors"); }).find("minlen: the tensors overflows"),
              std::string::npos);
    EXPECT_NE(error_of([] { checked_add(INT64_MAX, 1, "load", "'q.npy'"); }).find("load: 'q.npy' overflows"), std::string::npos);
}

TEST(Parse, ControlCharactersAreShownEscaped) {
    EXPECT_EQ(visible("plain text, UTF-8 é"), "plain text, UTF-8 é");
    EXPECT_EQ(visible("\x1b[31mred\t\x7f"), "\\x1b[31mred\\x09\\x7f");
    EXPECT_EQ(quoted("a\nb"), "'a\\x0ab'");
}

TEST(Parse, BooleanFlagsWorkBareAndWithAValue) {
    const std::vector<std::string> names = {"causal", "check"};
    const std::vector<std::pair<char, std::string>> shorts = {{'c', "check"}};
    using V = std::vector<std::string>;
    EXPECT_EQ(normalize_bool_flags(V{"--causal", "--heads", "4"}, names, shorts), (V{"--causal=true", "--heads", "4"}));
    EXPECT_EQ(normalize_bool_flags(V{"--causal", "false", "-c", "0"}, names, shorts), (V{"--causal=false", "--check=0"}));
    EXPECT_EQ(normalize_bool_flags(V{"--causal=yes", "-c"}, names, shorts), (V{"--causal=yes", "--check=true"}));
    EXPECT_EQ(normalize_bool_flags(V{"--causalx", "-b", "1K"}, names, shorts), (V{"--causalx", "-b", "1K"}));
    // Through the parser: bare, valued, and a stray argument refused.
    EXPECT_TRUE(parse({"--causal", "-b", "1K"}).pattern.spec.causal);
    EXPECT_FALSE(parse({"--causal", "off", "-b", "1K"}).pattern.spec.causal);
    EXPECT_FALSE(parse({"-c", "false"}).checks.enabled);
    EXPECT_NE(error_of([] { parse({"-b", "1K", "2K"}); }).find("option: unexpected argument '2K'"), std::string::npos);
}

TEST(Parse, SweepsGrowAndStayBounded) {
    EXPECT_EQ(parse({"-b", "1000", "-e", "3000", "-f", "1.5"}).sweep.lengths,
              (std::vector<std::int64_t>{1000, 1500, 2250}));
    EXPECT_EQ(parse({"-b", "1K", "-e", "4K"}).sweep.lengths, (std::vector<std::int64_t>{1024, 2048, 4096}));
    EXPECT_NE(error_of([] { parse({"-b", "4K", "-e", "8K", "-f", "1.0000001"}); }).find("does not grow the length 4096"),
              std::string::npos);
    EXPECT_NE(error_of([] { parse({"-b", "1000", "-e", "1G", "-f", "1.1"}); }).find("more than 64 lengths"), std::string::npos);
    // A step past 2^63 ends the sweep (the next length is not formed); the sizes are then refused.
    EXPECT_NE(error_of([] {
                  parse({"-b", "9223372036854775000", "-e", "9223372036854775807", "-f", "1.0000000000000002"});
              }).find("overflows 64-bit sizes"),
              std::string::npos);
}

TEST(Parse, WhatDoesNotFitIsRefusedNotClamped) {
    EXPECT_NE(error_of([] { validate_for_ranks(parse({"-b", "1K", "--docs", "2000"}), 1); }).find("docs: 2000 documents"),
              std::string::npos);
    EXPECT_NE(error_of([] { validate_for_ranks(parse({"-b", "1K", "--doc-lens", "2K"}), 1); }).find("doc-lens: a document of 2048"),
              std::string::npos);
    EXPECT_NE(error_of([] { validate_for_ranks(parse({"-b", "1K", "--global-list", "3,1024"}), 1); }).find("got 1024"),
              std::string::npos);
    // Weak scaling: the sequence is the per-rank length times the ranks, so more fits.
    validate_for_ranks(parse({"-b", "1K", "--scaling", "weak", "--strategy", "ring", "--doc-lens", "2K"}), 2);
    EXPECT_NE(error_of([] { validate_for_ranks(parse({"-b", "4G", "--scaling", "weak", "--strategy", "ring", "--heads", "1024",
                                                      "--head-dim", "256"}),
                                               1 << 20); })
                  .find("overflows 64-bit sizes"),
              std::string::npos);
}

}  // namespace
