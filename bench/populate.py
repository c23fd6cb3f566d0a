#!/usr/bin/python3
"""populate.py: fill a ZooKeeper chroot with Nodepool data the way
upstream writes it (json.dumps of upstream's dicts), fast: kazoo's async
creates, many in flight.

usage: bench/populate.py HOSTS CA CERT KEY CHROOT NODES REQUESTS
"""
import json
import sys
import time

from kazoo.client import KazooClient


def node(i, now):
    d = {"state": "ready", "state_time": now - i, "cloud": "fake",
         "provider": "fake-provider", "pool": "main", "type": ["small"],
         "allocated_to": None, "az": "nova", "region": None,
         "public_ipv4": "203.0.113.%d" % (i % 250),
         "private_ipv4": "10.0.%d.%d" % (i // 250 % 250, i % 250),
         "public_ipv6": None, "host_id": "host-%d" % i,
         "interface_ip": "203.0.113.%d" % (i % 250), "connection_port": 22,
         "ssh_port": 22, "image_id": "fake-image", "launcher": "nl01",
         "created_time": now - i, "external_id": "srv-%08d" % i,
         "hostname": "node-%d" % i, "comment": None, "user_data": None,
         "hold_job": None, "host_keys": ["ssh-ed25519 AAAAC3Nza"],
         "username": "zuul", "connection_type": "ssh", "shell_type": None,
         "hold_expiration": None,
         "resources": {"cores": 8, "instances": 1, "ram": 8192},
         "slot": None, "attributes": None, "python_path": "auto",
         "tenant_name": "tenant", "driver_data": None, "requestor": "zuul"}
    return json.dumps(d).encode("utf8")


def request(i, now):
    d = {"requestor_data": {"job_name": "job-%d" % i},
         "node_types": ["small", "small"], "requestor": "zuul-system",
         "created_time": now, "provider": None, "state": "requested",
         "state_time": now, "relative_priority": i % 5,
         "event_id": "ev-%d" % i, "tenant_name": "tenant"}
    return json.dumps(d).encode("utf8")


def create_all(zk, items):
    pending = []
    for path, data in items:
        pending.append(zk.create_async(path, data, sequence=True))
        if len(pending) >= 2000:
            for p in pending:
                p.get()
            pending = []
    for p in pending:
        p.get()


def main():
    hosts, ca, cert, key, chroot, nnodes, nreqs = sys.argv[1:8]
    zk = KazooClient(hosts=hosts + chroot, use_ssl=True, ca=ca,
                     certfile=cert, keyfile=key, verify_certs=False)
    zk.start(timeout=15)
    zk.ensure_path("/nodepool/nodes")
    zk.ensure_path("/nodepool/requests")
    now = time.time()
    create_all(zk, (("/nodepool/nodes/", node(i, now))
                    for i in range(int(nnodes))))
    create_all(zk, (("/nodepool/requests/%03d-" % (100 * (1 + i % 3)),
                     request(i, now)) for i in range(int(nreqs))))
    zk.stop()
    zk.close()


if __name__ == "__main__":
    main()
