module clothing-model/tools/cluster/pause

go 1.24
