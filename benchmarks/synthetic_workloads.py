"""Workloads and pods for the synthetic cluster, with real ownership chains.

Pods hang off ReplicaSets (with `pod-template-hash`) that hang off Deployments, kube-proxy
and node-exporter are hostNetwork DaemonSet pods, a few CronJob pods have Succeeded and a
few pods are Pending without an IP. Those last three kinds are in every real dump and are
exactly the pods a matrix must leave out (DESIGN §2, §3.7, §4), so `matrix_pods` records
which pods must appear — the benchmark checks the CLI's output against it.
"""

from __future__ import annotations

from synthetic_inventory import (
    CATALOG,
    SYSTEM_NAMESPACES,
    AppDef,
    AppInstance,
    Builder,
    Obj,
    PortDef,
)

_DNS = (PortDef("dns", 53, "UDP"), PortDef("dns-tcp", 53, "TCP"), PortDef("metrics", 9153))
_ENVOY_PROM = PortDef("http-envoy-prom", 15090)
_INGRESS = (PortDef("http", 80), PortDef("https", 443), PortDef("metrics", 10254))
_TOLERATIONS = [
    {
        "effect": "NoExecute",
        "key": f"node.kubernetes.io/{k}",
        "operator": "Exists",
        "tolerationSeconds": 300,
    }
    for k in ("not-ready", "unreachable")
]


def _container(name: str, image: str, ports: tuple[PortDef, ...]) -> Obj:
    c: Obj = {
        "image": f"registry.example.com/{image}",
        "imagePullPolicy": "IfNotPresent",
        "name": name,
        "resources": {
            "limits": {"memory": "512Mi"},
            "requests": {"cpu": "100m", "memory": "128Mi"},
        },
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    }
    if ports:
        c["ports"] = [
            {"containerPort": p.port, "name": p.name, "protocol": p.protocol} for p in ports
        ]
        if ports[0].protocol == "TCP":
            probe = {"tcpSocket": {"port": ports[0].name}, "periodSeconds": 10}
            c["readinessProbe"] = {**probe, "failureThreshold": 3, "timeoutSeconds": 1}
    return c


class WorkloadWriter:
    """Writes every controller and pod; collects what policies and validation need."""

    def __init__(self, b: Builder, namespaces: list[tuple[str, dict[str, str]]]) -> None:
        self.b = b
        self.namespaces = namespaces
        self.apps: list[AppInstance] = []
        self.pod_ips: list[str] = []
        """Primary IPs of pods in the matrix (ipBlocks are chosen to cover some)."""
        self.matrix_pods: list[str] = []
        self.out: list[Obj] = []

    # ------------------------------------------------------------------ pods

    def pod(
        self,
        *,
        namespace: str,
        name: str,
        labels: dict[str, str],
        owner: Obj,
        containers: list[Obj],
        node: int,
        host_network: bool = False,
        phase: str = "Running",
    ) -> None:
        """One pod; Running pods get an IP (the node's for hostNetwork), others none."""
        b = self.b
        sa_volume = f"kube-api-access-{b.rand(5)}"
        for c in containers:
            c["volumeMounts"] = [
                {
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                    "name": sa_volume,
                    "readOnly": True,
                }
            ]
        spec: Obj = {
            "containers": containers,
            "dnsPolicy": "ClusterFirstWithHostNet" if host_network else "ClusterFirst",
            "enableServiceLinks": True,
            "nodeName": b.node_names[node],
            "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0,
            "restartPolicy": "OnFailure" if phase == "Succeeded" else "Always",
            "schedulerName": "default-scheduler",
            "securityContext": {},
            "serviceAccount": "default",
            "serviceAccountName": "default",
            "terminationGracePeriodSeconds": 30,
            "tolerations": _TOLERATIONS,
            "volumes": [
                {
                    "name": sa_volume,
                    "projected": {
                        "defaultMode": 420,
                        "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {
                                "configMap": {
                                    "items": [{"key": "ca.crt", "path": "ca.crt"}],
                                    "name": "kube-root-ca.crt",
                                }
                            },
                        ],
                    },
                }
            ],
        }
        if host_network:
            spec["hostNetwork"] = True
        host_ip = b.node_ips[node]
        status: Obj = {"hostIP": host_ip, "hostIPs": [{"ip": host_ip}], "phase": phase}
        status["qosClass"] = "Burstable"
        status["startTime"] = b.stamp()
        ready = "True" if phase == "Running" else "False"
        status["conditions"] = [
            {"lastProbeTime": None, "lastTransitionTime": b.stamp(), "status": s, "type": t}
            for t, s in (
                ("PodReadyToStartContainers", "True" if phase != "Pending" else "False"),
                ("Initialized", "True"),
                ("Ready", ready),
                ("ContainersReady", ready),
                ("PodScheduled", "True"),
            )
        ]
        state: Obj = {"running": {"startedAt": b.stamp()}}
        if phase == "Pending":
            state = {"waiting": {"reason": "ContainerCreating"}}
        elif phase == "Succeeded":
            state = {"terminated": {"exitCode": 0, "reason": "Completed"}}
        status["containerStatuses"] = [
            {
                "containerID": f"containerd://{b.uid().replace('-', '')}{b.rand(32)}"[:77],
                "image": c["image"],
                "name": c["name"],
                "ready": phase == "Running",
                "restartCount": b.rng.choice((0, 0, 0, 0, 1, 2)),
                "started": phase == "Running",
                "state": state,
            }
            for c in containers
        ]
        if phase != "Pending":
            ip = host_ip if host_network else b.pod_ip(node)
            status["podIP"] = ip
            status["podIPs"] = [{"ip": ip}]
            if not host_network and phase == "Running":
                self.pod_ips.append(ip)
                self.matrix_pods.append(f"{namespace}/{name}")
        meta = b.meta(namespace, name, labels=labels, ownerReferences=[owner])
        meta["generateName"] = name[: name.rfind("-") + 1]
        self.out.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
        self.out[-1]["status"] = status

    # ------------------------------------------------------------------ controllers

    @staticmethod
    def _ref(kind: str, obj: Obj) -> Obj:
        api = "batch/v1" if kind == "Job" else "apps/v1"
        return {
            "apiVersion": api,
            "blockOwnerDeletion": True,
            "controller": True,
            "kind": kind,
            "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"],
        }

    def deployment(
        self,
        *,
        namespace: str,
        app: AppDef,
        name: str,
        labels: dict[str, str],
        selector: dict[str, str],
        replicas: int,
        extra_containers: tuple[Obj, ...] = (),
    ) -> None:
        """Deployment → current ReplicaSet (+ sometimes a scaled-down old one) → pods."""
        b = self.b
        tmpl_spec = {"containers": [_container(app.name, app.image, app.ports)]}
        template: Obj = {"metadata": {"labels": labels}, "spec": tmpl_spec}
        dep: Obj = {"apiVersion": "apps/v1", "kind": "Deployment"}
        dep["metadata"] = b.meta(
            namespace, name, labels={"app": labels.get("app", name)}, generation=3
        )
        dep["spec"] = {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": template,
        }
        dep["status"] = {"availableReplicas": replicas, "replicas": replicas}
        self.out.append(dep)
        revisions = [0, replicas] if b.rng.random() < 0.3 else [replicas]
        for rev, count in enumerate(revisions, start=1):
            h = b.rand(10)
            rs_labels = {**labels, "pod-template-hash": h}
            rs: Obj = {"apiVersion": "apps/v1", "kind": "ReplicaSet"}
            rs["metadata"] = b.meta(
                namespace,
                f"{name}-{h}",
                labels=rs_labels,
                annotations={"deployment.kubernetes.io/revision": str(rev)},
                ownerReferences=[self._ref("Deployment", dep)],
            )
            rs["spec"] = {
                "replicas": count,
                "selector": {"matchLabels": {**selector, "pod-template-hash": h}},
                "template": {**template, "metadata": {"labels": rs_labels}},
            }
            rs["status"] = {"replicas": count, "readyReplicas": count}
            self.out.append(rs)
            for _ in range(count):
                self.pod(
                    namespace=namespace,
                    name=b.unique(f"{rs['metadata']['name']}-"),
                    labels=rs_labels,
                    owner=self._ref("ReplicaSet", rs),
                    containers=[
                        _container(app.name, app.image, app.ports),
                        *(dict(c) for c in extra_containers),
                    ],
                    node=b.rng.randrange(len(b.node_names)),
                    phase="Pending" if b.rng.random() < 0.01 else "Running",
                )
        self.apps.append(AppInstance(namespace, name, app.tier, dict(labels), app.ports))

    def daemonset(self, *, namespace: str, name: str, labels: dict[str, str], port: int) -> None:
        """One hostNetwork pod per node: node traffic, never selectable (§3.7)."""
        b = self.b
        ds: Obj = {"apiVersion": "apps/v1", "kind": "DaemonSet"}
        ds["metadata"] = b.meta(namespace, name, labels=labels, generation=1)
        ports = (PortDef("metrics", port),)
        ds["spec"] = {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [_container(name, f"{name}:v1", ports)]},
            },
        }
        self.out.append(ds)
        rev = b.rand(10)
        for node in range(len(b.node_names)):
            pod_labels = {**labels, "controller-revision-hash": rev}
            pod_labels["pod-template-generation"] = "1"
            self.pod(
                namespace=namespace,
                name=b.unique(f"{name}-"),
                labels=pod_labels,
                owner=self._ref("DaemonSet", ds),
                containers=[_container(name, f"{name}:v1", ports)],
                node=node,
                host_network=True,
            )

    def cronjob_pods(self, *, namespace: str, team: str, count: int) -> None:
        """Completed Job pods: they keep `status.podIP` but own no IP any more (§2)."""
        b = self.b
        for _ in range(count):
            job: Obj = {"apiVersion": "batch/v1", "kind": "Job"}
            job["metadata"] = b.meta(namespace, b.unique("nightly-report-", 8))
            self.out.append(job)
            labels = {"app": "nightly-report", "team": team, "job-name": job["metadata"]["name"]}
            self.pod(
                namespace=namespace,
                name=b.unique(f"{job['metadata']['name']}-"),
                labels=labels,
                owner=self._ref("Job", job),
                containers=[_container("report", "python:3.12-slim", ())],
                node=b.rng.randrange(len(b.node_names)),
                phase="Succeeded",
            )

    # ------------------------------------------------------------------ the cluster

    def write(self) -> list[Obj]:
        """Platform workloads first, then the app namespaces' share of the remaining pods."""
        b, nodes = self.b, len(self.b.node_names)
        self.daemonset(
            namespace="kube-system", name="kube-proxy", labels={"k8s-app": "kube-proxy"}, port=10249
        )
        self.daemonset(
            namespace="monitoring",
            name="node-exporter",
            labels={"app.kubernetes.io/name": "node-exporter"},
            port=9100,
        )
        dns = AppDef("coredns", "infra", _DNS, "coredns:1.11.3")
        dns_labels = {"k8s-app": "kube-dns"}
        self.deployment(
            namespace="kube-system",
            app=dns,
            name="coredns",
            labels=dns_labels,
            selector=dns_labels,
            replicas=2,
        )
        prom = AppDef("prometheus", "infra", (PortDef("web", 9090),), "prometheus:v2.54.1")
        prom_labels = {"app": "prometheus", "app.kubernetes.io/name": "prometheus"}
        self.deployment(
            namespace="monitoring",
            app=prom,
            name="prometheus",
            labels=prom_labels,
            selector={"app": "prometheus"},
            replicas=1,
        )
        nginx = AppDef("controller", "edge", _INGRESS, "ingress-nginx/controller:v1.11.3")
        nginx_labels = {
            "app.kubernetes.io/component": "controller",
            "app.kubernetes.io/name": "ingress-nginx",
        }
        self.deployment(
            namespace="ingress-nginx",
            app=nginx,
            name="ingress-nginx-controller",
            labels=nginx_labels,
            selector=nginx_labels,
            replicas=2,
        )
        system_pods = 2 * nodes + 5
        app_ns = [(n, labels) for n, labels in self.namespaces if n not in SYSTEM_NAMESPACES]
        left = b.spec.pods - system_pods
        if left < 2 * len(app_ns):
            raise ValueError(
                f"{b.spec.pods} pods is too few: {system_pods} are platform pods on "
                f"{nodes} nodes and each of {len(app_ns)} app namespaces needs two"
            )
        for (name, labels), share in zip(app_ns, self._shares(left, len(app_ns)), strict=True):
            self._app_namespace(name, labels, share)
        return self.out

    def _shares(self, total: int, parts: int) -> list[int]:
        """Uneven but exact split of `total` pods (largest-remainder rounding)."""
        weights = [self.b.rng.uniform(0.4, 1.6) for _ in range(parts)]
        raw = [total * w / sum(weights) for w in weights]
        shares = [max(2, int(r)) for r in raw]
        order = sorted(range(parts), key=lambda i: raw[i] - int(raw[i]), reverse=True)
        i = 0
        while sum(shares) != total:
            k = order[i % parts]
            step = 1 if sum(shares) < total else -1
            if shares[k] + step >= 2:
                shares[k] += step
            i += 1
        return shares

    def _app_namespace(self, namespace: str, ns_labels: dict[str, str], share: int) -> None:
        b = self.b
        team = ns_labels["team"]
        if share >= 10 and b.rng.random() < 0.25:
            jobs = b.rng.randint(1, 2)
            self.cronjob_pods(namespace=namespace, team=team, count=jobs)
            share -= jobs
        sidecar: tuple[Obj, ...] = ()
        if ns_labels.get("istio-injection") == "enabled":
            sidecar = (_container("istio-proxy", "istio/proxyv2:1.23.2", (_ENVOY_PROM,)),)
        catalog = list(CATALOG)
        b.rng.shuffle(catalog)
        lap = 0
        while share > 0:
            for app in catalog:
                if share <= 0:
                    break
                replicas = min(share, b.rng.choice((1, 2, 2, 3, 3, 3, 4, 5, 6, 8)))
                share -= replicas
                name = app.name if lap == 0 else f"{app.name}-{lap + 1}"
                labels = {"app": name, "team": team, "tier": app.tier}
                roll = b.rng.random()
                if roll < 0.85:  # some workloads never set a version (NotIn must match them)
                    labels["version"] = b.rng.choice(("v1", "v2", "v2", "v3"))
                if roll < 0.08:
                    labels["canary"] = "true"
                self.deployment(
                    namespace=namespace,
                    app=app,
                    name=name,
                    labels=labels,
                    selector={"app": name},
                    replicas=replicas,
                    extra_containers=sidecar,
                )
                self._service(namespace, name, app.ports)
            lap += 1

    def _service(self, namespace: str, name: str, ports: tuple[PortDef, ...]) -> None:
        served = [p for p in ports if p.name != "metrics"]
        if not served:
            return
        svc: Obj = {"apiVersion": "v1", "kind": "Service"}
        svc["metadata"] = self.b.meta(namespace, name, labels={"app": name})
        ip = self.b.service_ip()
        svc["spec"] = {
            "clusterIP": ip,
            "clusterIPs": [ip],
            "ports": [
                {
                    "name": p.name,
                    "port": 80 if p.port == 8080 else p.port,
                    "protocol": p.protocol,
                    "targetPort": p.name,
                }
                for p in served
            ],
            "selector": {"app": name},
            "type": "ClusterIP",
        }
        self.out.append(svc)
