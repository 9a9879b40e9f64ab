package store

import "github.com/dmctl/dmctl/internal/iothub"

// RegistryStatistics counts the registered devices by status. Modules are
// not counted, as on IoT Hub. The counts come from one snapshot of the
// published state, so they always add up.
func (s *Store) RegistryStatistics() (iothub.RegistryStatistics, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return iothub.RegistryStatistics{}, ErrClosed
	}
	var st iothub.RegistryStatistics
	for _, id := range s.ids {
		st.TotalDeviceCount++
		if s.recs[id].rec.Status == statusDisabled {
			st.DisabledDeviceCount++
		} else {
			st.EnabledDeviceCount++
		}
	}
	return st, nil
}

// ServiceStatistics counts the devices whose connectionState is Connected
// now (modules are not counted).
func (s *Store) ServiceStatistics() (iothub.ServiceStatistics, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return iothub.ServiceStatistics{}, ErrClosed
	}
	var st iothub.ServiceStatistics
	for _, id := range s.ids {
		if s.recs[id].rec.ConnState == stateConnected {
			st.ConnectedDeviceCount++
		}
	}
	return st, nil
}
