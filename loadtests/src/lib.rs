//! Load generator for the gateway: adapter popularity (Zipf), arrival process and lengths;
//! reports throughput, TTFT, TPOT and SLO attainment.
