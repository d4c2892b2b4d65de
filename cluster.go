package main

// The RedisCluster object as the manager reads it (the contract's spec and
// status), and the entry of status.instancesStatus it writes for its pod.

import "time"

// redisCluster is the part of the RedisCluster object the manager reads.
type redisCluster struct {
	Metadata objectMeta    `json:"metadata"`
	Spec     clusterSpec   `json:"spec"`
	Status   clusterStatus `json:"status"`
}

type objectMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace,omitempty"`
	Generation  int64             `json:"generation,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type clusterSpec struct {
	Instances     int     `json:"instances"`
	TargetPrimary string  `json:"targetPrimary"`
	ConfigMapRef  *keyRef `json:"configMapRef"`
	AuthSecretRef *keyRef `json:"authSecretRef"`
	Replication   struct {
		MaxLagBytes int64 `json:"maxLagBytes"`
	} `json:"replication"`
	TLS       *tlsSpec   `json:"tls"`
	Users     []userSpec `json:"users"`
	Bootstrap struct {
		Restore *restoreSpec `json:"restore"`
	} `json:"bootstrap"`
}

// tlsSpec is spec.tls: a kubernetes.io/tls Secret (tls.crt, tls.key,
// ca.crt) and whether Redis asks its clients for a certificate.
type tlsSpec struct {
	SecretRef  *nameRef `json:"secretRef"`
	ClientAuth string   `json:"clientAuth"` // none (also empty), optional, required
}

type nameRef struct {
	Name string `json:"name"`
}

// userSpec is one entry of spec.users: an ACL user, its rules (never a
// password), and the Secret key of its password.
type userSpec struct {
	Name              string  `json:"name"`
	Rules             string  `json:"rules"`
	PasswordSecretRef *keyRef `json:"passwordSecretRef"`
}

type keyRef struct {
	Name string `json:"name"`
	Key  string `json:"key"`
}

type clusterStatus struct {
	CurrentPrimary  string                    `json:"currentPrimary,omitempty"`
	InstancesStatus map[string]instanceStatus `json:"instancesStatus,omitempty"`
}

func (rc *redisCluster) targetPrimary() string {
	if rc.Spec.TargetPrimary != "" {
		return rc.Spec.TargetPrimary
	}
	return rc.Metadata.Name + "-0"
}

// instanceStatus is status.instancesStatus[<pod>] and the body of /v1/status.
// No field is omitted when empty: a merge patch must be able to clear it.
type instanceStatus struct {
	Role               string    `json:"role"`
	Address            string    `json:"address"`
	Ready              bool      `json:"ready"`
	NotReadyReason     string    `json:"notReadyReason"`
	Fenced             bool      `json:"fenced"`
	MasterLinkStatus   string    `json:"masterLinkStatus"`
	ReplicationID      string    `json:"replicationID"`
	ReplicationOffset  int64     `json:"replicationOffset"`
	LagBytes           int64     `json:"lagBytes"`
	ConnectedReplicas  int64     `json:"connectedReplicas"`
	UsedMemoryBytes    int64     `json:"usedMemoryBytes"`
	Keys               int64     `json:"keys"`
	RedisVersion       string    `json:"redisVersion"`
	ManagerVersion     string    `json:"managerVersion"`
	ExecutableHash     string    `json:"executableHash"`
	ConfigHash         string    `json:"configHash"`
	PendingRestart     []string  `json:"pendingRestart"`
	Restarts           int       `json:"restarts"`
	SentinelAddress    string    `json:"sentinelAddress"`
	TLS                bool      `json:"tls"` // redis-server serves TLS: how the others reach it
	LastError          string    `json:"lastError"`
	ObservedGeneration int64     `json:"observedGeneration"`
	UpdatedAt          time.Time `json:"updatedAt"`
}

// clusterView is everything the manager reads from its source at one moment.
type clusterView struct {
	cluster  redisCluster
	fragment string       // the ConfigMap's redis.conf fragment
	password string       // from the Secret; empty without authSecretRef
	tls      *tlsMaterial // the spec.tls Secret as read, unchecked; nil without spec.tls
	users    []declaredUser
	usersErr string // why a user's password could not be read: the users stay as they were
	seq      uint64 // stamped by the feed
}
