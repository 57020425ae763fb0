"""Capture backends: kernel or file input turned into `Connection` records (DESIGN §1).

`ebpf` (bcc, TC on pod veths; the default on a node), `sniff` (scapy AF_PACKET; where
eBPF is unavailable), `pcap` (a capture file), `replay` (a JSON Lines flow log; also the
test double). All implement `FlowSource` from `base`.
"""
