package main

import (
	"context"
	"log"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
)

const volumeLabel = "pgshift.dev/fakelet-volume"

func labelsEverything() labels.Selector { return labels.Everything() }

func volumeDir(stateDir, pvName string) string {
	return filepath.Join(stateDir, "volumes", pvName)
}

// volumeManager is a provisioner: every pending claim gets a PersistentVolume pre-bound to it
// and backed by a folder; the controller manager's binder then binds the pair. When a claim
// is deleted, its volume and folder go too.
type volumeManager struct {
	cs   kubernetes.Interface
	o    options
	as   runAs
	pvcs corelisters.PersistentVolumeClaimLister
	pvs  corelisters.PersistentVolumeLister
}

func newVolumeManager(cs kubernetes.Interface, f informers.SharedInformerFactory, o options, as runAs) *volumeManager {
	return &volumeManager{cs: cs, o: o, as: as,
		pvcs: f.Core().V1().PersistentVolumeClaims().Lister(),
		pvs:  f.Core().V1().PersistentVolumes().Lister()}
}

func (v *volumeManager) run(ctx context.Context) {
	for {
		v.syncOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-time.After(300 * time.Millisecond):
		}
	}
}

func (v *volumeManager) syncOnce(ctx context.Context) {
	claims, _ := v.pvcs.List(labels.Everything())
	live := map[string]bool{}
	for _, c := range claims {
		name := "pv-" + string(c.UID)
		live[name] = true
		if c.Spec.VolumeName != "" || c.DeletionTimestamp != nil {
			continue
		}
		if _, err := v.pvs.Get(name); err == nil {
			continue
		}
		dir := volumeDir(v.o.stateDir, name)
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			log.Printf("volume %s: %v", name, err)
			continue
		}
		if err := v.as.mkdirOwned(dir); err != nil {
			log.Printf("volume %s: %v", name, err)
			continue
		}
		size := c.Spec.Resources.Requests[corev1.ResourceStorage]
		if size.IsZero() {
			size = resource.MustParse("1Gi")
		}
		modes := c.Spec.AccessModes
		if len(modes) == 0 {
			modes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
		}
		pv := &corev1.PersistentVolume{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{volumeLabel: "true"}},
			Spec: corev1.PersistentVolumeSpec{
				Capacity:                      corev1.ResourceList{corev1.ResourceStorage: size},
				AccessModes:                   modes,
				PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
				StorageClassName:              ptrValue(c.Spec.StorageClassName),
				VolumeMode:                    c.Spec.VolumeMode,
				PersistentVolumeSource: corev1.PersistentVolumeSource{
					HostPath: &corev1.HostPathVolumeSource{Path: dir},
				},
				ClaimRef: &corev1.ObjectReference{
					Kind: "PersistentVolumeClaim", APIVersion: "v1",
					Namespace: c.Namespace, Name: c.Name, UID: c.UID,
				},
			},
		}
		if _, err := v.cs.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			log.Printf("volume %s for claim %s/%s: %v", name, c.Namespace, c.Name, err)
			continue
		}
		log.Printf("volume %s: provisioned for claim %s/%s at %s", name, c.Namespace, c.Name, dir)
	}
	vols, _ := v.pvs.List(labels.SelectorFromSet(labels.Set{volumeLabel: "true"}))
	for _, pv := range vols {
		if live[pv.Name] || pv.DeletionTimestamp != nil {
			continue
		}
		if err := v.cs.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			log.Printf("volume %s: deleting: %v", pv.Name, err)
			continue
		}
		_ = os.RemoveAll(volumeDir(v.o.stateDir, pv.Name))
		log.Printf("volume %s: claim gone, volume and data deleted", pv.Name)
	}
}

func ptrValue(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
