"""Experiments: the paper's tables and figures, the demo, the benchmarks, and their reports.

    paper   reconstruction error against S (Table 2) and the FID grid (Table 1), beside the
            paper's numbers (the runners they use are the sampling stage's)
    demo    the whole flow on procedural shapes on the CPU, ending in a report
    bench   throughput of sampling and training, fp32 eager against the fast path
    report  line plots and Markdown/HTML reports, shared by all of them
"""
