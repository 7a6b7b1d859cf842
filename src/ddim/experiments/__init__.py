"""Experiments: the paper's tables and figures, the demo, the benchmarks, and their reports.

    paper   encoding, reconstruction (Table 2), interpolation, trajectories, the FID grid (Table 1)
    demo    the whole flow on procedural shapes on the CPU, ending in a report
    bench   throughput of sampling and training, fp32 eager against the fast path
    report  line plots and Markdown/HTML reports, shared by all of them
"""
