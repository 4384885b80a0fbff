module clothing-model/tests/cluster/pause

go 1.24
