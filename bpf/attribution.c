/* Attribution of TCP connections to the process that opened them (appliance, issue 5).
 *
 * Where this sits: a CI job connects to a protected target; netfilter redirects the flow to
 * the appliance's listener, which sees only the job socket's local address and port as the
 * peer. These programs, attached to one cgroup (the root cgroup on a runner, the job's
 * cgroup in the lab), record who connected so that the listener can ask:
 *
 *   cgroup/connect4, cgroup/connect6  (apl_connect4, apl_connect6)
 *       at connect(): tgid, pid, uid, gid, comm, cgroup id, netns cookie and the original
 *       destination, keyed by socket cookie, into apl_owners;
 *   sockops  (apl_sockops)
 *       right before the SYN (TCP_CONNECT_CB, local address and port are assigned by then):
 *       local address and port -> socket cookie, into apl_flows; on TCP_CLOSE both entries
 *       are deleted.
 *
 * No kprobes, no perf buffer: userspace reads the maps when it accepts a connection.
 * Nothing is lost silently: failed map updates and connections that reached the SYN without
 * an owner record (evicted from the LRU map) are counted in apl_stats.
 *
 * The one refusal (issue 13): a connect() from a socket carrying the appliance's mark, made
 * by a task outside the appliance's cgroup, is refused (EPERM) and reported in the ring
 * buffer apl_bypass, for the daemon to record as a bypass attempt. Anyone with CAP_NET_RAW
 * or CAP_NET_ADMIN can set the mark; only the appliance may use it. Netfilter refuses the
 * same connection on its own (its cgroup match), BPF or not: this says so early, and who.
 *
 * Addresses are kept as 16 bytes, IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d), so that a v4
 * flow looks the same whether the job used an AF_INET socket or a v4-mapped AF_INET6 one.
 *
 * Compile-time parameters (passed by appliance/capture/_attribution.py as -D flags, checked
 * there to be integers):
 *   APL_MAX_FLOWS     capacity of both LRU maps
 *   APL_MARK          the appliance's own SO_MARK: its upstream sockets are not recorded
 *   APL_FILTER_PORTS  1: record only connections to ports listed in apl_ports; 0: all TCP
 *   APL_OWN_CGROUP    the id of the appliance's cgroup (with APL_OWN_LEVEL 0: none, every
 *                     marked connect() is refused)
 *   APL_OWN_LEVEL     its depth in the cgroup v2 hierarchy (tasks below it count as its own)
 */
#include <uapi/linux/bpf.h>

#ifndef APL_MAX_FLOWS
#error "APL_MAX_FLOWS must be defined"
#endif
#ifndef APL_MARK
#error "APL_MARK must be defined"
#endif
#ifndef APL_FILTER_PORTS
#error "APL_FILTER_PORTS must be defined"
#endif
#ifndef APL_OWN_CGROUP
#error "APL_OWN_CGROUP must be defined"
#endif
#ifndef APL_OWN_LEVEL
#error "APL_OWN_LEVEL must be defined"
#endif

#define APL_AF_INET 2
#define APL_AF_INET6 10
#define APL_SOCK_STREAM 1
#define APL_IPPROTO_TCP 6

/* Indexes into apl_stats (mirrored in appliance/capture/_attribution.py). */
#define APL_STAT_RECORDED 0      /* connect() recorded in apl_owners */
#define APL_STAT_OWNER_FAILED 1  /* apl_owners update failed */
#define APL_STAT_FLOW_FAILED 2   /* apl_flows update failed */
#define APL_STAT_OWNER_MISSING 3 /* a recorded-port connection reached the SYN with no owner */
#define APL_STAT_CLOSED 4        /* entries removed because the connection closed */
#define APL_STAT_BYPASS 5        /* marked connect() refused outside the appliance's cgroup */
#define APL_STAT_BYPASS_LOST 6   /* ... whose report did not fit in apl_bypass */
#define APL_NSTATS 7

struct apl_owner_t {
    u64 cookie;       /* socket cookie */
    u64 cgroup_id;    /* cgroup v2 id of the connecting task */
    u64 netns_cookie; /* network namespace of the socket */
    u64 boot_ns;      /* CLOCK_BOOTTIME at connect(): tells a reused pid from the original */
    u32 tgid;         /* process id as userspace sees it */
    u32 pid;          /* thread id */
    u32 uid;
    u32 gid;
    u8 daddr[16];     /* original destination, IPv4 as ::ffff:a.b.c.d */
    u16 dport;        /* host byte order */
    u16 family;       /* the socket's address family */
    char comm[16];
};

struct apl_flow_key_t {
    u8 addr[16]; /* the connecting socket's local address, IPv4 as ::ffff:a.b.c.d */
    u16 port;    /* host byte order */
    u16 pad;
};

BPF_TABLE("lru_hash", u64, struct apl_owner_t, apl_owners, APL_MAX_FLOWS);
BPF_TABLE("lru_hash", struct apl_flow_key_t, u64, apl_flows, APL_MAX_FLOWS);
BPF_HASH(apl_ports, u16, u8, 1024);
BPF_PERCPU_ARRAY(apl_stats, u64, APL_NSTATS);
BPF_RINGBUF_OUTPUT(apl_bypass, 8); /* 8 pages: ~300 reports between two reads */

static __always_inline void apl_count(u32 index)
{
    u64 *value = apl_stats.lookup(&index);
    if (value)
        *value += 1;
}

static __always_inline int apl_wanted_port(u16 port)
{
#if APL_FILTER_PORTS
    return apl_ports.lookup(&port) != NULL;
#else
    return 1;
#endif
}

static __always_inline void apl_mapped_v4(u8 *addr, u32 ip4_be)
{
    __builtin_memset(addr, 0, 10);
    addr[10] = 0xff;
    addr[11] = 0xff;
    *(u32 *)&addr[12] = ip4_be;
}

static __always_inline void apl_store(struct apl_owner_t *owner)
{
    u64 cookie = owner->cookie;
    if (apl_owners.update(&cookie, owner) != 0)
        apl_count(APL_STAT_OWNER_FAILED);
    else
        apl_count(APL_STAT_RECORDED);
}

static __always_inline int apl_own_cgroup(void)
{
#if APL_OWN_LEVEL > 0
    return bpf_get_current_ancestor_cgroup_id(APL_OWN_LEVEL) == APL_OWN_CGROUP;
#else
    return 0;
#endif
}

static __always_inline void apl_fill(struct bpf_sock_addr *ctx, struct apl_owner_t *owner,
                                     u16 dport)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u64 uid_gid = bpf_get_current_uid_gid();
    owner->cookie = bpf_get_socket_cookie(ctx);
    owner->cgroup_id = bpf_get_current_cgroup_id();
    owner->netns_cookie = bpf_get_netns_cookie(ctx);
    owner->boot_ns = bpf_ktime_get_boot_ns();
    owner->tgid = pid_tgid >> 32;
    owner->pid = (u32)pid_tgid;
    owner->uid = (u32)uid_gid;
    owner->gid = uid_gid >> 32;
    owner->dport = dport;
    bpf_get_current_comm(&owner->comm, sizeof(owner->comm));
}

/* What to do with a connect(): */
#define APL_PASS 0   /* let it go, unrecorded */
#define APL_RECORD 1 /* record its owner */
#define APL_REFUSE 2 /* the appliance's mark outside its cgroup: refuse and report */

static __always_inline int apl_judge(struct bpf_sock_addr *ctx, struct apl_owner_t *owner)
{
    if (ctx->type != APL_SOCK_STREAM || ctx->protocol != APL_IPPROTO_TCP)
        return APL_PASS;
    u16 dport = bpf_ntohs((u16)ctx->user_port);
    struct bpf_sock *sk = ctx->sk;
    if (sk && sk->mark == APL_MARK) {
        if (apl_own_cgroup())
            return APL_PASS; /* the appliance's own upstream socket */
        apl_fill(ctx, owner, dport);
        return APL_REFUSE;
    }
    if (!apl_wanted_port(dport))
        return APL_PASS;
    apl_fill(ctx, owner, dport);
    return APL_RECORD;
}

/* The program's return value: 1 lets connect() go on, 0 fails it with EPERM. */
static __always_inline int apl_finish(struct apl_owner_t *owner, int verdict)
{
    if (verdict == APL_REFUSE) {
        apl_count(APL_STAT_BYPASS);
        if (apl_bypass.ringbuf_output(owner, sizeof(*owner), 0) != 0)
            apl_count(APL_STAT_BYPASS_LOST);
        return 0;
    }
    apl_store(owner);
    return 1;
}

int apl_connect4(struct bpf_sock_addr *ctx)
{
    struct apl_owner_t owner = {};
    int verdict = apl_judge(ctx, &owner);
    if (verdict == APL_PASS)
        return 1;
    owner.family = APL_AF_INET;
    apl_mapped_v4(owner.daddr, ctx->user_ip4);
    return apl_finish(&owner, verdict);
}

int apl_connect6(struct bpf_sock_addr *ctx)
{
    struct apl_owner_t owner = {};
    int verdict = apl_judge(ctx, &owner);
    if (verdict == APL_PASS)
        return 1;
    owner.family = APL_AF_INET6;
    *(u32 *)&owner.daddr[0] = ctx->user_ip6[0];
    *(u32 *)&owner.daddr[4] = ctx->user_ip6[1];
    *(u32 *)&owner.daddr[8] = ctx->user_ip6[2];
    *(u32 *)&owner.daddr[12] = ctx->user_ip6[3];
    return apl_finish(&owner, verdict);
}

static __always_inline int apl_flow_key(struct bpf_sock_ops *skops, struct apl_flow_key_t *key)
{
    if (skops->family == APL_AF_INET) {
        apl_mapped_v4(key->addr, skops->local_ip4);
    } else if (skops->family == APL_AF_INET6) {
        *(u32 *)&key->addr[0] = skops->local_ip6[0];
        *(u32 *)&key->addr[4] = skops->local_ip6[1];
        *(u32 *)&key->addr[8] = skops->local_ip6[2];
        *(u32 *)&key->addr[12] = skops->local_ip6[3];
    } else {
        return 0;
    }
    key->port = (u16)skops->local_port; /* host byte order already */
    return 1;
}

int apl_sockops(struct bpf_sock_ops *skops)
{
    u32 op = skops->op;
    struct apl_flow_key_t key = {};

    if (op == BPF_SOCK_OPS_TCP_CONNECT_CB) {
        struct bpf_sock *sk = skops->sk;
        if (sk && sk->mark == APL_MARK)
            return 1; /* the appliance's own upstream socket */
        u64 cookie = bpf_get_socket_cookie(skops);
        if (!apl_owners.lookup(&cookie)) {
            /* sock_ops reads remote_port as the network-order port in the upper half. */
            u16 dport = (u16)bpf_ntohl(skops->remote_port);
            if (apl_wanted_port(dport))
                apl_count(APL_STAT_OWNER_MISSING);
            return 1;
        }
        if (!apl_flow_key(skops, &key))
            return 1;
        if (apl_flows.update(&key, &cookie) != 0) {
            apl_count(APL_STAT_FLOW_FAILED);
            return 1;
        }
        /* Ask for state changes on this socket so the entries go when it closes. */
        bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
                                             BPF_SOCK_OPS_STATE_CB_FLAG);
    } else if (op == BPF_SOCK_OPS_STATE_CB) {
        if (skops->args[1] != BPF_TCP_CLOSE)
            return 1;
        u64 cookie = bpf_get_socket_cookie(skops);
        if (apl_flow_key(skops, &key)) {
            u64 *mapped = apl_flows.lookup(&key);
            if (mapped && *mapped == cookie)
                apl_flows.delete(&key);
        }
        if (apl_owners.delete(&cookie) == 0)
            apl_count(APL_STAT_CLOSED);
    }
    return 1;
}
