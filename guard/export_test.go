package guard

// FastPhone exposes the fast path to the differential tests.
var FastPhone = fastPhone
