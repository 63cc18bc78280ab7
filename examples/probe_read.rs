fn main() {
    let path = std::env::args().nth(1).unwrap_or("/tmp/probe.dat".into());
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(64 << 20)
        .spawn(move || async move {
            let f = glommio::io::OpenOptions::new().read(true).write(true).create(true).dma_open(&path).await.unwrap();
            println!("size {}", f.file_size().await.unwrap());
            for (pos, len) in [(0u64, 4096usize), (0, 1 << 20), (0, 2 << 20), (0, 4198464), (0, 8 << 20)] {
                let r = f.read_at(pos, len).await;
                println!("pos {pos} len {len}: {:?}", r.map(|r| r.len()).map_err(|e| e.to_string()));
            }
        })
        .unwrap()
        .join()
        .unwrap();
}
