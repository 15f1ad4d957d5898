package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// Pod volumes other than claims: what the kubelet's volume plugins would mount, written as
// plain files into the pod's folder (podDir/volumes/<volume>) when the container starts.
// Secret, configMap, projected (secret, configMap, downwardAPI, serviceAccountToken sources)
// and downwardAPI volumes are supported; emptyDir is an empty folder. A missing Secret or
// ConfigMap keeps the Pod waiting (as the kubelet's FailedMount does) unless marked optional.

func podVolumeDir(podDir, volume string) string { return filepath.Join(podDir, "volumes", volume) }

// volumeFile is one file of a volume: its path inside the volume, content and mode.
type volumeFile struct {
	path string
	data []byte
	mode os.FileMode
}

// materializeVolumes writes every supported volume of the pod below podDir, owned by owner.
// A volume of any other type (hostPath, csi, ...) is a permanent error: fakelet cannot
// provide it honestly. Volumes backed by claims are not touched (see hostPath).
func (m *podManager) materializeVolumes(pod *corev1.Pod, podDir string, owner runAs) error {
	for _, v := range pod.Spec.Volumes {
		dir := podVolumeDir(podDir, v.Name)
		var files []volumeFile
		var err error
		switch {
		case v.PersistentVolumeClaim != nil:
			continue
		case v.EmptyDir != nil:
			if err := owner.mkdirMode(dir, 0o777); err != nil {
				return err
			}
			continue
		case v.Secret != nil:
			files, err = m.secretFiles(pod.Namespace, v.Secret.SecretName, v.Secret.Items,
				v.Secret.DefaultMode, v.Secret.Optional)
		case v.ConfigMap != nil:
			files, err = m.configMapFiles(pod.Namespace, v.ConfigMap.Name, v.ConfigMap.Items,
				v.ConfigMap.DefaultMode, v.ConfigMap.Optional)
		case v.DownwardAPI != nil:
			files, err = downwardFiles(pod, v.DownwardAPI.Items, v.DownwardAPI.DefaultMode)
		case v.Projected != nil:
			files, err = m.projectedFiles(pod, v.Projected)
		default:
			return permanent(fmt.Sprintf("Unsupported: volume %s: fakelet provides claims, emptyDir, "+
				"secret, configMap, downwardAPI and projected volumes only", v.Name))
		}
		if err != nil {
			return err
		}
		if err := writeVolume(dir, files, owner); err != nil {
			return fmt.Errorf("volume %s: %w", v.Name, err)
		}
	}
	return nil
}

func fileMode(item, def *int32, fallback os.FileMode) os.FileMode {
	switch {
	case item != nil:
		return os.FileMode(*item)
	case def != nil:
		return os.FileMode(*def)
	}
	return fallback
}

// keyFiles turns a Secret's or ConfigMap's keys into files: every key, or the listed items.
func keyFiles(what string, data map[string][]byte, items []corev1.KeyToPath, def *int32) ([]volumeFile, error) {
	var out []volumeFile
	if len(items) == 0 {
		for k, v := range data {
			out = append(out, volumeFile{k, v, fileMode(nil, def, 0o644)})
		}
		return out, nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			return nil, waitError{fmt.Sprintf("%s has no key %s", what, it.Key)}
		}
		out = append(out, volumeFile{it.Path, v, fileMode(it.Mode, def, 0o644)})
	}
	return out, nil
}

func (m *podManager) secretFiles(ns, name string, items []corev1.KeyToPath, def *int32, optional *bool) ([]volumeFile, error) {
	s, err := m.cs.CoreV1().Secrets(ns).Get(context.Background(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && ptr.Deref(optional, false) {
		return nil, nil
	}
	if err != nil {
		return nil, waitError{fmt.Sprintf("secret %s: %v", name, err)}
	}
	return keyFiles("secret "+name, s.Data, items, def)
}

func (m *podManager) configMapFiles(ns, name string, items []corev1.KeyToPath, def *int32, optional *bool) ([]volumeFile, error) {
	cm, err := m.cs.CoreV1().ConfigMaps(ns).Get(context.Background(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && ptr.Deref(optional, false) {
		return nil, nil
	}
	if err != nil {
		return nil, waitError{fmt.Sprintf("configmap %s: %v", name, err)}
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return keyFiles("configmap "+name, data, items, def)
}

// fieldValue resolves a downward API field of the pod (the fields a kubelet resolves
// without a container runtime).
func fieldValue(pod *corev1.Pod, field string) (string, error) {
	switch field {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "status.hostIP":
		return "127.0.0.1", nil
	case "metadata.labels", "metadata.annotations":
		kv := pod.Labels
		if field == "metadata.annotations" {
			kv = pod.Annotations
		}
		var lines []string
		for k, v := range kv {
			lines = append(lines, fmt.Sprintf("%s=%q", k, v))
		}
		sort.Strings(lines)
		return strings.Join(lines, "\n"), nil
	}
	return "", permanent(fmt.Sprintf("Unsupported: downward API field %s", field))
}

func downwardFiles(pod *corev1.Pod, items []corev1.DownwardAPIVolumeFile, def *int32) ([]volumeFile, error) {
	var out []volumeFile
	for _, it := range items {
		if it.FieldRef == nil {
			return nil, permanent(fmt.Sprintf("Unsupported: downward API file %s (only fieldRef)", it.Path))
		}
		v, err := fieldValue(pod, it.FieldRef.FieldPath)
		if err != nil {
			return nil, err
		}
		out = append(out, volumeFile{it.Path, []byte(v), fileMode(it.Mode, def, 0o644)})
	}
	return out, nil
}

func (m *podManager) projectedFiles(pod *corev1.Pod, p *corev1.ProjectedVolumeSource) ([]volumeFile, error) {
	var out []volumeFile
	for _, src := range p.Sources {
		var files []volumeFile
		var err error
		switch {
		case src.Secret != nil:
			files, err = m.secretFiles(pod.Namespace, src.Secret.Name, src.Secret.Items, p.DefaultMode, src.Secret.Optional)
		case src.ConfigMap != nil:
			files, err = m.configMapFiles(pod.Namespace, src.ConfigMap.Name, src.ConfigMap.Items, p.DefaultMode, src.ConfigMap.Optional)
		case src.DownwardAPI != nil:
			files, err = downwardFiles(pod, src.DownwardAPI.Items, p.DefaultMode)
		case src.ServiceAccountToken != nil:
			var token string
			token, err = m.podToken(pod, src.ServiceAccountToken)
			files = []volumeFile{{src.ServiceAccountToken.Path, []byte(token), fileMode(nil, p.DefaultMode, 0o644)}}
		default:
			err = permanent("Unsupported: a projected volume source other than secret, configMap, downwardAPI, serviceAccountToken")
		}
		if err != nil {
			return nil, err
		}
		out = append(out, files...)
	}
	return out, nil
}

// podToken asks the TokenRequest API for a token of the pod's ServiceAccount bound to the
// Pod (it stops working when the Pod is deleted), as the kubelet does for projected tokens.
func (m *podManager) podToken(pod *corev1.Pod, src *corev1.ServiceAccountTokenProjection) (string, error) {
	exp := ptr.Deref(src.ExpirationSeconds, 3600)
	var aud []string
	if src.Audience != "" {
		aud = []string{src.Audience}
	}
	sa := orDefault(pod.Spec.ServiceAccountName, "default")
	tr, err := m.cs.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(context.Background(), sa,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
			Audiences: aud, ExpirationSeconds: &exp,
			BoundObjectRef: &authenticationv1.BoundObjectReference{
				Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		}}, metav1.CreateOptions{})
	if err != nil {
		return "", waitError{fmt.Sprintf("token for ServiceAccount %s: %v", sa, err)}
	}
	m.noteTokenExpiry(pod, tr.Status.ExpirationTimestamp.Time, time.Duration(exp)*time.Second)
	return tr.Status.Token, nil
}

// writeVolume writes the files into dir, each through a temporary file and a rename (a
// process reading the volume never sees half a file; a bind mount of dir sees new files).
func writeVolume(dir string, files []volumeFile, owner runAs) error {
	if err := owner.mkdirMode(dir, 0o755); err != nil {
		return err
	}
	for _, f := range files {
		rel := filepath.Clean("/" + f.path)[1:]
		if rel == "" || strings.HasPrefix(rel, "..") {
			return permanent(fmt.Sprintf("Unsupported: volume file path %q", f.path))
		}
		p := filepath.Join(dir, rel)
		if err := owner.mkdirMode(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		tmp := p + ".fakelet-tmp"
		if err := os.WriteFile(tmp, f.data, 0o600); err != nil {
			return err
		}
		if err := owner.chown(tmp); err != nil {
			return err
		}
		if err := os.Chmod(tmp, f.mode&0o777); err != nil {
			return err
		}
		if err := os.Rename(tmp, p); err != nil {
			return err
		}
	}
	return nil
}

// mkdirMode makes dir and its missing parents with the given mode, owned by r.
func (r runAs) mkdirMode(dir string, mode os.FileMode) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if err := r.mkdirMode(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	if err := os.Mkdir(dir, mode); err != nil && !os.IsExist(err) {
		return err
	}
	_ = os.Chmod(dir, mode)
	return r.chown(dir)
}
