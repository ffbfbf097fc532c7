"""One library call per job: the driver-side sequences that compose the lake (lakescore), the
scoring UDFs (udfs) and training on Ray (training).

    jobs/  ->  pipelines/  ->  (udfs/, training/)  ->  lakescore/

A job in jobs/ parses its arguments, builds settings, opens Spark (and Ray), calls one function
here and prints; tests and benchmarks call these functions, never jobs/.
"""
