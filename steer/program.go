package steer

import (
	"encoding/binary"

	"github.com/cilium/ebpf/asm"
)

// The program, in BPF assembly (no C compiler at build time). It is a port of
// sticky.Bucket; TestProgramAgreesWithBucket and the connection tests check
// that the two compute the same bucket, so keep the constants below equal to
// sticky's.
//
//	r6 = ctx
//	proto := ctx.eth_protocol
//	IPv4: load 4 bytes at network offset 12 (saddr): hi = 0, lo = 0x0000ffff<<32 | be32
//	IPv6: load 16 bytes at network offset 8 (saddr): hi, lo = be64, be64
//	no packet (a migration from a closing listener's accept queue): the
//	  same from ctx->migrating_sk's remote address
//	anything else: SK_PASS without a selection
//	bucket := mix64(mix64(hi ^ keySalt) ^ lo) >> 52
//	instance := table[bucket]                 (missing: SK_PASS)
//	bpf_sk_select_reuseport(ctx, socks, &instance, 0)   (an empty slot or an
//	                                           out-of-range instance fails: SK_PASS)
//	return SK_PASS
//
// SK_PASS without a selection makes the kernel pick by its own hash of the
// 4-tuple, as if no program were attached: a connection is never refused
// because steering could not place it.
const (
	keySalt  = 0x9e3779b97f4a7c15
	mixMul1  = 0xbf58476d1ce4e5b9
	mixMul2  = 0x94d049bb133111eb
	v4Prefix = 0x0000ffff_00000000 // lo of ::ffff:0.0.0.0

	bucketShift = 64 - 12 // sticky.Buckets = 1<<12

	hdrStartNet = 1 // BPF_HDR_START_NET
	afInet      = 2
	afInet6     = 10
	skPass      = 1 // SK_PASS

	// Offsets of the packet's protocol (skb->protocol, network byte order)
	// in the two contexts the code runs in.
	reuseportEthProtocol = 20 // struct sk_reuseport_md.eth_protocol
	reuseportMigratingSk = 48 // struct sk_reuseport_md.migrating_sk
	skbProtocol          = 16 // struct __sk_buff.protocol (the test build)

	// noInstance fills the buckets of an empty set: no socket array is that
	// large, so the selection fails and the kernel's hash decides.
	noInstance = ^uint32(0)
)

// Registers the code keeps values in across helper calls (r6-r9 survive
// calls; r0-r5 do not).
const (
	rCtx = asm.R6
	rHi  = asm.R8
	rLo  = asm.R9
)

// Stack: the address at fp-16..fp-1, the map key at fp-20.
const (
	stackAddr = -16
	stackKey  = -20
)

// ethP returns an Ethernet protocol number as the context holds it: the
// 16-bit big-endian value read as a host-order integer.
func ethP(p uint16) int32 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return int32(binary.NativeEndian.Uint16(b[:]))
}

// u64 turns an unsigned 64-bit constant into the int64 LoadImm takes.
func u64(v uint64) int64 { return int64(v) }

// bucketCode computes the bucket of the packet's source address into rHi,
// reading the protocol at protoOff in the context; it jumps to label "pass"
// when it cannot. The context must be in rCtx. With migrating, a context
// without a readable packet (a listener closing and its accept queue
// migrating: the kernel passes an empty one) takes the address from the
// migrating socket instead, its remote address.
func bucketCode(protoOff int16, migrating bool) asm.Instructions {
	load := func(off, size int32) asm.Instructions {
		return asm.Instructions{
			asm.Mov.Reg(asm.R1, rCtx),
			asm.Mov.Imm(asm.R2, off),
			asm.Mov.Reg(asm.R3, asm.RFP),
			asm.Add.Imm(asm.R3, stackAddr),
			asm.Mov.Imm(asm.R4, size),
			asm.Mov.Imm(asm.R5, hdrStartNet),
			asm.FnSkbLoadBytesRelative.Call(),
			asm.JNE.Imm(asm.R0, 0, "nopacket"),
		}
	}
	mix := func(r asm.Register) asm.Instructions {
		return asm.Instructions{
			asm.Mov.Reg(asm.R1, r), asm.RSh.Imm(asm.R1, 30), asm.Xor.Reg(r, asm.R1),
			asm.LoadImm(asm.R1, u64(mixMul1), asm.DWord), asm.Mul.Reg(r, asm.R1),
			asm.Mov.Reg(asm.R1, r), asm.RSh.Imm(asm.R1, 27), asm.Xor.Reg(r, asm.R1),
			asm.LoadImm(asm.R1, u64(mixMul2), asm.DWord), asm.Mul.Reg(r, asm.R1),
			asm.Mov.Reg(asm.R1, r), asm.RSh.Imm(asm.R1, 31), asm.Xor.Reg(r, asm.R1),
		}
	}
	var insns asm.Instructions
	insns = append(insns,
		asm.LoadMem(asm.R7, rCtx, protoOff, asm.Word),
		asm.JEq.Imm(asm.R7, ethP(0x0800), "ipv4"),
		asm.JNE.Imm(asm.R7, ethP(0x86dd), "nopacket"),
	)
	// IPv6: the source address is 16 bytes at offset 8 of the header.
	insns = append(insns, load(8, 16)...)
	insns = append(insns,
		asm.LoadMem(rHi, asm.RFP, stackAddr, asm.DWord),
		asm.HostTo(asm.BE, rHi, asm.DWord),
		asm.LoadMem(rLo, asm.RFP, stackAddr+8, asm.DWord),
		asm.HostTo(asm.BE, rLo, asm.DWord),
		asm.Ja.Label("hash"),
	)
	// IPv4: 4 bytes at offset 12, hashed in their IPv4-mapped form.
	v4 := load(12, 4)
	v4[0] = v4[0].WithSymbol("ipv4")
	insns = append(insns, v4...)
	insns = append(insns,
		asm.LoadMem(rLo, asm.RFP, stackAddr, asm.Word),
		asm.HostTo(asm.BE, rLo, asm.Word), // zero-extends: the high half is 0
		asm.LoadImm(asm.R1, v4Prefix, asm.DWord),
		asm.Or.Reg(rLo, asm.R1),
		asm.Mov.Imm(rHi, 0),
		asm.Ja.Label("hash"),
	)
	if migrating {
		insns = append(insns, sockAddrCode()...)
	} else {
		insns = append(insns, asm.Ja.Label("pass").WithSymbol("nopacket"))
	}
	// hash: rHi = mix64(mix64(hi ^ keySalt) ^ lo) >> 52.
	insns = append(insns, asm.LoadImm(asm.R1, u64(keySalt), asm.DWord).WithSymbol("hash"), asm.Xor.Reg(rHi, asm.R1))
	insns = append(insns, mix(rHi)...)
	insns = append(insns, asm.Xor.Reg(rHi, rLo))
	insns = append(insns, mix(rHi)...)
	insns = append(insns, asm.RSh.Imm(rHi, bucketShift))
	return insns
}

// sockAddrCode ("nopacket") loads rHi, rLo from ctx->migrating_sk's remote
// address (struct bpf_sock: family at 4, dst_ip4 at 52, dst_ip6 at 56, all
// in network byte order, read 32 bits at a time as the verifier requires)
// and jumps to "hash"; without a migrating socket, to "pass". A dual-stack
// socket holds an IPv4 client as ::ffff:a.b.c.d, the same 16 bytes the
// packet path hashes.
func sockAddrCode() asm.Instructions {
	word := func(dst asm.Register, off int16) asm.Instructions {
		return asm.Instructions{
			asm.LoadMem(dst, asm.R1, off, asm.Word),
			asm.HostTo(asm.BE, dst, asm.Word),
		}
	}
	// Two words of dst_ip6 into one big-endian 64-bit half.
	half := func(dst asm.Register, off int16) asm.Instructions {
		insns := word(dst, off)
		insns = append(insns, asm.LSh.Imm(dst, 32))
		insns = append(insns, word(asm.R2, off+4)...)
		return append(insns, asm.Or.Reg(dst, asm.R2))
	}
	insns := asm.Instructions{
		asm.LoadMem(asm.R1, rCtx, reuseportMigratingSk, asm.DWord).WithSymbol("nopacket"),
		asm.JEq.Imm(asm.R1, 0, "pass"),
		asm.LoadMem(asm.R2, asm.R1, 4, asm.Word),
		asm.JEq.Imm(asm.R2, afInet, "sock4"),
		asm.JNE.Imm(asm.R2, afInet6, "pass"),
	}
	insns = append(insns, half(rHi, 56)...)
	insns = append(insns, half(rLo, 64)...)
	insns = append(insns, asm.Ja.Label("hash"))
	v4 := word(rLo, 52)
	v4[0] = v4[0].WithSymbol("sock4")
	insns = append(insns, v4...)
	return append(insns,
		asm.LoadImm(asm.R1, v4Prefix, asm.DWord),
		asm.Or.Reg(rLo, asm.R1),
		asm.Mov.Imm(rHi, 0),
		asm.Ja.Label("hash"),
	)
}

// steerCode is the sk_reuseport program: the bucket, then the instance from
// table, then the socket from socks. The map references are resolved by the
// loader from the maps named in ProgramSpec's instructions.
// With migrating, it reads a migrating socket's address when there is no
// packet (ctx->migrating_sk exists from Linux 5.14, as does migration).
func steerCode(migrating bool) asm.Instructions {
	insns := asm.Instructions{asm.Mov.Reg(rCtx, asm.R1)}
	insns = append(insns, bucketCode(reuseportEthProtocol, migrating)...)
	insns = append(insns,
		// instance := table[bucket]
		asm.StoreMem(asm.RFP, stackKey, rHi, asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference(tableName),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stackKey),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Word),
		asm.StoreMem(asm.RFP, stackKey, asm.R1, asm.Word),
		// bpf_sk_select_reuseport(ctx, socks, &instance, 0); its result
		// does not matter: on failure nothing is selected.
		asm.Mov.Reg(asm.R1, rCtx),
		asm.LoadMapPtr(asm.R2, 0).WithReference(socksName),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, stackKey),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnSkSelectReuseport.Call(),
		asm.Mov.Imm(asm.R0, skPass).WithSymbol("pass"),
		asm.Return(),
	)
	return insns
}

// bucketTestCode is the bucket computation as a socket filter, which
// BPF_PROG_TEST_RUN can run on a crafted packet (sk_reuseport programs
// cannot be test-run): it returns the bucket, or bucketTestFail.
func bucketTestCode() asm.Instructions {
	insns := asm.Instructions{asm.Mov.Reg(rCtx, asm.R1)}
	insns = append(insns, bucketCode(skbProtocol, false)...)
	insns = append(insns,
		asm.Mov.Reg(asm.R0, rHi),
		asm.Return(),
		asm.Mov.Imm(asm.R0, bucketTestFail).WithSymbol("pass"),
		asm.Return(),
	)
	return insns
}

const bucketTestFail = 1 << 20
