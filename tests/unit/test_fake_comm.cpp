// The fake communicator itself: exact values through every operation, the pairing and batching rules
// of comm/communicator.hpp, splits and the byte counter, and that misuse, a failing rank or a
// deadlock end the run with a clear error instead of a hang.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "fake_comm.hpp"

namespace longattn::test {
namespace {

using comm::Communicator;
using comm::Request;

// Runs fn and returns the message of the exception of type E it must throw ("" and a failure if none).
template <class E, class F>
std::string error_of(F&& fn) {
    try {
        fn();
    } catch (const E& e) {
        return e.what();
    } catch (const std::exception& e) {
        ADD_FAILURE() << "wrong exception type: " << e.what();
        return {};
    }
    ADD_FAILURE() << "no exception";
    return {};
}

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

class BothModes : public ::testing::TestWithParam<Batches> {};
INSTANTIATE_TEST_SUITE_P(FakeComm, BothModes, ::testing::Values(Batches::ordered, Batches::eager),
                         [](const auto& info) { return info.param == Batches::ordered ? "ordered" : "eager"; });

TEST_P(BothModes, MessagesPairByTagInPostingOrder) {
    run_ranks(
        2,
        [](Communicator& c) {
            // Rank 0 sends tag 5, tag 7, tag 5; rank 1 receives tag 7 first, then the two tag 5 in
            // order, the second into a larger buffer whose tail must stay untouched.
            const std::vector<int> a = {1, 2, 3}, b = {40, 50}, d = {600};
            if (c.rank() == 0) {
                Request r[3] = {c.isend(a.data(), 12, 1, 5), c.isend(b.data(), 8, 1, 7), c.isend(d.data(), 4, 1, 5)};
                c.flush();
                for (Request& x : r) c.wait(x);
                EXPECT_FALSE(r[0].active());
            } else {
                std::vector<int> got_b(2, -1), got_a(3, -1), got_d(3, -1);
                Request r[3] = {c.irecv(got_b.data(), 8, 0, 7), c.irecv(got_a.data(), 12, 0, 5),
                                c.irecv(got_d.data(), 12, 0, 5)};
                c.flush();
                for (Request& x : r) c.wait(x);
                EXPECT_EQ(got_a, a);
                EXPECT_EQ(got_b, b);
                EXPECT_EQ(got_d, (std::vector<int>{600, -1, -1}));
            }
        },
        GetParam());
}

TEST_P(BothModes, RingOfNonBlockingStepsOnFiveRanks) {
    run_ranks(
        5,
        [](Communicator& c) {
            const int P = c.size(), r = c.rank();
            // Each step passes the value held on to the next rank, as a ring strategy does with shards.
            std::int64_t held = 100 * r, in = -1;
            for (int t = 0; t < P; ++t) {
                Request rx = c.irecv(&in, sizeof(in), (r - 1 + P) % P, t);
                Request tx = c.isend(&held, sizeof(held), (r + 1) % P, t);
                c.flush();
                c.progress();
                c.wait(rx);
                c.wait(tx);
                held = in;
                EXPECT_EQ(held, 100 * ((r - t - 1 + 2 * P) % P)) << "step " << t;
            }
            EXPECT_EQ(held, 100 * r);  // back home after P steps
        },
        GetParam());
}

TEST_P(BothModes, TestReportsCompletionOnceAndResetsTheRequest) {
    run_ranks(
        2,
        [](Communicator& c) {
            std::int64_t x = 7, y = 0;
            if (c.rank() == 0) {
                Request s = c.isend(&x, sizeof(x), 1, 0);
                c.barrier();  // rank 1's receive is posted and launched after this
                c.barrier();
                while (!c.test(s)) {}
                EXPECT_FALSE(s.active());
                EXPECT_TRUE(c.test(s));  // an inactive request is complete
            } else {
                c.barrier();
                Request r = c.irecv(&y, sizeof(y), 0, 0);
                c.flush();
                c.barrier();
                c.wait(r);
                EXPECT_EQ(y, 7);
            }
        },
        GetParam());
}

// A batch completes as a whole under Batches::ordered (rule 4 of the contract); each operation alone
// under Batches::eager.
TEST_P(BothModes, ARequestCompletesWithItsWholeBatchWhenOrdered) {
    const Batches mode = GetParam();
    run_ranks(
        2,
        [mode](Communicator& c) {
            std::int64_t a = 1, b = 2, ra = 0, rb = 0;
            if (c.rank() == 0) {
                Request s1 = c.isend(&a, sizeof(a), 1, 1), s2 = c.isend(&b, sizeof(b), 1, 2);
                c.flush();
                c.barrier();  // rank 1 has received tag 1; tag 2 is not received yet
                EXPECT_EQ(c.test(s1), mode == Batches::eager);
                c.barrier();
                c.wait(s1);
                c.wait(s2);
            } else {
                Request r1 = c.irecv(&ra, sizeof(ra), 0, 1);
                c.flush();
                c.wait(r1);
                c.barrier();
                c.barrier();
                Request r2 = c.irecv(&rb, sizeof(rb), 0, 2);
                c.flush();
                c.wait(r2);
                EXPECT_EQ(ra, 1);
                EXPECT_EQ(rb, 2);
            }
        },
        mode);
}

// Rule 2: a receive launched a step ahead of its send. MPI takes it (eager); under ordered batches
// each rank's first batch waits for a send queued behind the other's: reported, not hung.
TEST_P(BothModes, ReceiveAStepAheadOfItsSendDeadlocksOnlyWhenOrdered) {
    const Batches mode = GetParam();
    auto run = [mode] {
        run_ranks(
            2,
            [](Communicator& c) {
                const int peer = 1 - c.rank();
                std::int64_t out = c.rank(), in = -1;
                Request rx = c.irecv(&in, sizeof(in), peer, 10 + peer);
                c.flush();
                Request tx = c.isend(&out, sizeof(out), peer, 10 + c.rank());
                c.flush();
                c.wait(rx);
                c.wait(tx);
                EXPECT_EQ(in, peer);
            },
            mode);
    };
    if (mode == Batches::eager) {
        run();
    } else {
        const std::string msg = error_of<FakeWorldFailed>(run);
        EXPECT_TRUE(contains(msg, "deadlock")) << msg;
        EXPECT_TRUE(contains(msg, "wait(receive from")) << msg;
    }
}

TEST(FakeComm, AllToAllVWithUnevenAndEmptyBlocks) {
    run_ranks(4, [](Communicator& c) {
        const int P = c.size(), r = c.rank();
        // j sends (j + d) % 3 bytes of value 16 j + d to d: some blocks empty, the own one included.
        auto len = [](int j, int d) { return static_cast<std::size_t>((j + d) % 3); };
        std::vector<std::size_t> sb(4), so(4), rb(4), ro(4);
        std::vector<unsigned char> send, recv;
        for (int d = 0; d < P; ++d) {
            so[static_cast<std::size_t>(d)] = send.size();
            sb[static_cast<std::size_t>(d)] = len(r, d);
            send.insert(send.end(), len(r, d), static_cast<unsigned char>(16 * r + d));
            ro[static_cast<std::size_t>(d)] = 7 * static_cast<std::size_t>(d);  // gaps between the blocks
            rb[static_cast<std::size_t>(d)] = len(d, r);
        }
        recv.assign(28, 255);
        c.all_to_all_v(send.data(), sb.data(), so.data(), recv.data(), rb.data(), ro.data());
        for (int j = 0; j < P; ++j)
            for (std::size_t e = 0; e < 7; ++e)
                EXPECT_EQ(recv[7 * static_cast<std::size_t>(j) + e], e < len(j, r) ? 16 * j + r : 255) << "from " << j;
    });
}

TEST(FakeComm, AllToAllVSizesMustAgree) {
    const std::string msg = error_of<FakeCommError>([] {
        run_ranks(2, [](Communicator& c) {
            std::vector<std::size_t> sb = {0, 4}, rb = {0, 4}, off = {0, 0};
            if (c.rank() == 1) {  // sends 8 bytes where rank 0 expects 4
                sb = {8, 0};
                rb = {4, 0};
            }
            std::vector<unsigned char> send(8), recv(8);
            c.all_to_all_v(send.data(), sb.data(), off.data(), recv.data(), rb.data(), off.data());
        });
    });
    EXPECT_TRUE(contains(msg, "rank 1 sends 8 bytes to rank 0, which expects 4")) << msg;
}

TEST(FakeComm, AllGatherVWithUnevenParts) {
    run_ranks(4, [](Communicator& c) {
        const int P = c.size(), r = c.rank();
        // Rank j contributes j bytes of value j + 1 (rank 0 nothing), packed in rank order.
        std::vector<std::size_t> bytes(4), off(4);
        for (int j = 0; j < P; ++j) {
            bytes[static_cast<std::size_t>(j)] = static_cast<std::size_t>(j);
            off[static_cast<std::size_t>(j)] = static_cast<std::size_t>(j * (j - 1) / 2);
        }
        const std::vector<unsigned char> mine(static_cast<std::size_t>(r), static_cast<unsigned char>(r + 1));
        std::vector<unsigned char> all(7, 0);
        c.all_gather_v(mine.data(), all.data(), bytes.data(), off.data());
        EXPECT_EQ(all, (std::vector<unsigned char>{2, 3, 3, 4, 4, 4, 0}));
    });
}

TEST(FakeComm, ReductionsAreExact) {
    run_ranks(3, [](Communicator& c) {
        const int r = c.rank();
        double d[3] = {0.5 * r, 1.0, -1e300};
        c.all_reduce_sum(d, 2);
        EXPECT_EQ(d[0], 1.5);
        EXPECT_EQ(d[1], 3.0);
        EXPECT_EQ(d[2], -1e300);  // beyond n: untouched
        // Beyond 2^53: an int64 sum that any trip through double would round.
        std::int64_t big[2] = {(std::int64_t{1} << 60) + r, -r};
        c.all_reduce_sum(big, 2);
        EXPECT_EQ(big[0], 3 * (std::int64_t{1} << 60) + 3);
        EXPECT_EQ(big[1], -3);
        double m[2] = {-10.0 - r, r == 1 ? 4.25 : -2.0};
        c.all_reduce_max(m, 2);
        EXPECT_EQ(m[0], -10.0);
        EXPECT_EQ(m[1], 4.25);
    });
}

TEST(FakeComm, BroadcastFromEveryRoot) {
    run_ranks(3, [](Communicator& c) {
        for (int root = 0; root < c.size(); ++root) {
            std::int64_t v[2] = {c.rank() == root ? 1000 + root : -1, c.rank() == root ? -root : -1};
            c.broadcast(v, sizeof(v), root);
            EXPECT_EQ(v[0], 1000 + root);
            EXPECT_EQ(v[1], -root);
        }
    });
}

TEST(FakeComm, BarrierWaitsForEveryRank) {
    std::atomic<int> arrived{0};
    run_ranks(4, [&](Communicator& c) {
        for (int round = 1; round <= 3; ++round) {
            ++arrived;
            c.barrier();
            EXPECT_GE(arrived.load(), 4 * round);  // no rank gets past before all have arrived
            c.barrier();
        }
    });
    EXPECT_EQ(arrived.load(), 12);
}

TEST(FakeComm, SplitFormsOrderedGroupsWithWorkingOperations) {
    FakeWorld world(6);
    run_ranks(world, [](Communicator& c) {
        const int r = c.rank();
        // Colors r % 3 ({0,3}, {1,4}, {2,5}), ordered by descending old rank.
        const std::unique_ptr<Communicator> sub = c.split(r % 3, -r);
        ASSERT_EQ(sub->size(), 2);
        EXPECT_EQ(sub->rank(), r < 3 ? 1 : 0);
        // Collectives stay inside the group: the sum of the two old ranks.
        double sum = r;
        sub->all_reduce_sum(&sum, 1);
        EXPECT_EQ(sum, 2 * (r % 3) + 3);
        // Point to point inside the group, with the same tag as a world message at the same time.
        std::int64_t out = r, in = -1, win = -1;
        const int peer = 1 - sub->rank();
        Request rx = sub->irecv(&in, sizeof(in), peer, 0), tx = sub->isend(&out, sizeof(out), peer, 0);
        Request wrx = c.irecv(&win, sizeof(win), (r + 5) % 6, 0), wtx = c.isend(&out, sizeof(out), (r + 1) % 6, 0);
        sub->flush();
        c.flush();
        sub->wait(rx);
        sub->wait(tx);
        c.wait(wrx);
        c.wait(wtx);
        EXPECT_EQ(in, r < 3 ? r + 3 : r - 3);
        EXPECT_EQ(win, (r + 5) % 6);
        // A split of a split: each pair into two singletons, ordered by key.
        const std::unique_ptr<Communicator> one = sub->split(sub->rank(), 0);
        EXPECT_EQ(one->size(), 1);
        EXPECT_EQ(one->rank(), 0);
        one->barrier();
    });
    EXPECT_EQ(world.splits(), 4);  // the world once, then each of the three pairs
    EXPECT_FALSE(world.failed());
}

TEST(FakeComm, BytesSentCountedAsTheMpiCommunicatorDoes) {
    run_ranks(3, [](Communicator& c) {
        const int r = c.rank(), P = c.size();
        EXPECT_EQ(c.bytes_sent(), 0u);
        // Point to point: sends count, receives do not.
        std::vector<unsigned char> out(40, 1), in(40, 0);
        Request tx = c.isend(out.data(), 10u + static_cast<std::size_t>(r), (r + 1) % P, 3);
        Request rx = c.irecv(in.data(), 40, (r + P - 1) % P, 3);
        c.flush();
        c.wait(tx);
        c.wait(rx);
        EXPECT_EQ(c.bytes_sent(), 10u + static_cast<std::size_t>(r));
        c.reset_bytes_sent();
        // all_to_all_v: what goes to the other ranks (j sends j + d + 1 bytes to d), not the own block.
        std::vector<std::size_t> sb(3), so(3), rb(3), ro(3);
        for (int d = 0; d < P; ++d) {
            sb[static_cast<std::size_t>(d)] = static_cast<std::size_t>(r + d + 1);
            so[static_cast<std::size_t>(d)] = 10 * static_cast<std::size_t>(d);
            rb[static_cast<std::size_t>(d)] = static_cast<std::size_t>(d + r + 1);
            ro[static_cast<std::size_t>(d)] = 10 * static_cast<std::size_t>(d);
        }
        c.all_to_all_v(out.data(), sb.data(), so.data(), in.data(), rb.data(), ro.data());
        EXPECT_EQ(c.bytes_sent(), static_cast<std::uint64_t>(3 * (r + 1) + 3 - (r + r + 1)));
        c.reset_bytes_sent();
        // all_gather_v: the own part, to each of the others.
        std::vector<std::size_t> gb = {2, 3, 4}, go = {0, 2, 5};
        c.all_gather_v(out.data(), in.data(), gb.data(), go.data());
        EXPECT_EQ(c.bytes_sent(), static_cast<std::uint64_t>((r + 2) * (P - 1)));
        c.reset_bytes_sent();
        // Reductions, broadcast and barrier: nothing (the MPI communicator counts only its own sends).
        double x = 1;
        c.all_reduce_sum(&x, 1);
        c.broadcast(out.data(), 40, 0);
        c.barrier();
        EXPECT_EQ(c.bytes_sent(), 0u);
        // A sub-communicator counts its own traffic only.
        const std::unique_ptr<Communicator> sub = c.split(0, r);
        std::int64_t v = r, w = 0;
        Request s = sub->isend(&v, sizeof(v), (r + 1) % P, 0), q = sub->irecv(&w, sizeof(w), (r + P - 1) % P, 0);
        sub->flush();
        sub->wait(s);
        sub->wait(q);
        EXPECT_EQ(sub->bytes_sent(), sizeof(v));
        EXPECT_EQ(c.bytes_sent(), 0u);
    });
}

TEST(FakeComm, ReceiveSmallerThanItsMessageFails) {
    const std::string msg = error_of<FakeWorldFailed>([] {
        run_ranks(2, [](Communicator& c) {
            std::vector<unsigned char> buf(16, 0);
            Request r = c.rank() == 0 ? c.isend(buf.data(), 16, 1, 3) : c.irecv(buf.data(), 8, 0, 3);
            c.flush();
            c.wait(r);
        });
    });
    EXPECT_TRUE(contains(msg, "a 16-byte message from rank 0 to rank 1 (tag 3, comm 0) is larger than its 8-byte "
                              "receive"))
        << msg;
}

TEST(FakeComm, MismatchedCollectivesFail) {
    const std::string msg = error_of<FakeCommError>([] {
        run_ranks(2, [](Communicator& c) {
            if (c.rank() == 0) {
                c.barrier();
            } else {
                double x = 1;
                c.all_reduce_sum(&x, 1);
            }
        });
    });
    EXPECT_TRUE(contains(msg, "collective mismatch")) << msg;
    EXPECT_TRUE(contains(msg, "barrier")) << msg;
    EXPECT_TRUE(contains(msg, "all_reduce_sum(double)")) << msg;
}

TEST(FakeComm, MisuseIsReportedByTheRankThatDidIt) {
    EXPECT_TRUE(contains(error_of<FakeCommError>([] {
                             run_ranks(2, [](Communicator& c) {
                                 std::int64_t x = 0;
                                 c.isend(&x, sizeof(x), 2, 0);  // no rank 2
                             });
                         }),
                         "destination 2 is not a rank"));
    EXPECT_TRUE(contains(error_of<FakeCommError>([] {
                             run_ranks(1, [](Communicator& c) {
                                 std::int64_t x = 0, y = 0;
                                 Request s = c.isend(&x, sizeof(x), 0, 0), r = c.irecv(&y, sizeof(y), 0, 0);
                                 const Request copy = s;
                                 c.wait(s);
                                 c.wait(r);
                                 Request again = copy;
                                 c.wait(again);  // completed already
                             });
                         }),
                         "does not have outstanding"));
}

// A rank that throws releases the others from their waits; run_ranks rethrows its own error.
TEST(FakeComm, AFailingRankReleasesTheOthers) {
    std::atomic<int> released{0};
    const std::string msg = error_of<std::logic_error>([&] {
        run_ranks(3, [&](Communicator& c) {
            if (c.rank() == 1) throw std::logic_error("boom on rank 1");
            try {
                if (c.rank() == 0) {
                    c.barrier();
                } else {
                    std::int64_t x = 0;
                    Request r = c.irecv(&x, sizeof(x), 1, 0);
                    c.wait(r);
                }
            } catch (const FakeWorldFailed& e) {
                EXPECT_TRUE(contains(e.what(), "rank 1 threw: boom on rank 1")) << e.what();
                ++released;
                throw;
            }
        });
    });
    EXPECT_EQ(msg, "boom on rank 1");
    EXPECT_EQ(released.load(), 2);
}

TEST(FakeComm, AbortEndsEveryRank) {
    int code = 0;
    try {
        run_ranks(3, [](Communicator& c) {
            if (c.rank() == 2) c.abort(3);
            std::int64_t x = 0;
            Request r = c.irecv(&x, sizeof(x), 2, 0);
            c.wait(r);
        });
        ADD_FAILURE() << "no exception";
    } catch (const FakeAbort& e) {
        code = e.code();
        EXPECT_TRUE(contains(e.what(), "rank 2 of comm 0 (world rank 2) called abort(3)")) << e.what();
    }
    EXPECT_EQ(code, 3);
}

TEST(FakeComm, WaitingForAFinishedRankIsADeadlock) {
    const std::string msg = error_of<FakeWorldFailed>([] {
        run_ranks(3, [](Communicator& c) {
            if (c.rank() == 0) return;  // never sends
            std::int64_t x = 0;
            Request r = c.irecv(&x, sizeof(x), 0, 0);
            c.wait(r);
        });
    });
    EXPECT_TRUE(contains(msg, "deadlock")) << msg;
    EXPECT_TRUE(contains(msg, "rank 0: finished")) << msg;
}

TEST(FakeComm, DestroyingACommunicatorWithRequestsOutstandingFails) {
    const std::string msg = error_of<FakeWorldFailed>([] {
        run_ranks(2, [](Communicator& c) {
            const std::unique_ptr<Communicator> sub = c.split(0, 0);
            std::int64_t x = 0;
            if (c.rank() == 0) sub->irecv(&x, sizeof(x), 1, 0);  // never waited
        });
    });
    EXPECT_TRUE(contains(msg, "was destroyed with 1 requests outstanding")) << msg;
}

}  // namespace
}  // namespace longattn::test
