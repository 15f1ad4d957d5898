package main

import (
	"context"
	"log"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
)

// nodeAgent registers the Node and keeps it Ready (status heartbeat and node Lease), so the
// node lifecycle controller never taints it or evicts its Pods.
type nodeAgent struct {
	cs   kubernetes.Interface
	name string
}

func (n *nodeAgent) register(ctx context.Context) error {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: n.name,
			Labels: map[string]string{
				"kubernetes.io/hostname": n.name, "kubernetes.io/os": "linux",
				"kubernetes.io/arch": "amd64", "pgshift.dev/fake-kubelet": "true",
			},
		},
	}
	_, err := n.cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return retry.RetryOnConflict(retry.DefaultBackoff, func() error { return n.updateStatus(ctx) })
}

func (n *nodeAgent) updateStatus(ctx context.Context) error {
	node, err := n.cs.CoreV1().Nodes().Get(ctx, n.name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	now := metav1.Now()
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("8"),
		corev1.ResourceMemory: resource.MustParse("32Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	node.Status.Capacity = capacity
	node.Status.Allocatable = capacity
	node.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: "127.0.0.1"},
		{Type: corev1.NodeHostName, Address: n.name},
	}
	node.Status.NodeInfo = corev1.NodeSystemInfo{
		KubeletVersion: "v0.0.0-fakelet", OperatingSystem: "linux", Architecture: "amd64",
		ContainerRuntimeVersion: "fakelet://postgres",
	}
	ready := corev1.NodeCondition{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "FakeletReady",
		Message: "fakelet runs PostgreSQL pods", LastHeartbeatTime: now, LastTransitionTime: now,
	}
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
			ready.LastTransitionTime = c.LastTransitionTime
		}
	}
	node.Status.Conditions = []corev1.NodeCondition{ready}
	_, err = n.cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
	return err
}

func (n *nodeAgent) renewLease(ctx context.Context) error {
	leases := n.cs.CoordinationV1().Leases("kube-node-lease")
	now := metav1.NowMicro()
	lease, err := leases.Get(ctx, n.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: n.name},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity: ptr.To(n.name), LeaseDurationSeconds: ptr.To[int32](40),
				RenewTime: &now,
			},
		}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	lease.Spec.RenewTime = &now
	_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
	return err
}

func (n *nodeAgent) heartbeat(ctx context.Context) {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		if err := n.renewLease(ctx); err != nil && ctx.Err() == nil {
			log.Printf("node: renewing lease: %v", err)
		}
		if err := retry.RetryOnConflict(retry.DefaultBackoff, func() error { return n.updateStatus(ctx) }); err != nil && ctx.Err() == nil {
			log.Printf("node: updating status: %v", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
